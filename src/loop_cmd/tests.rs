use super::*;
use automaldesc_common::run_spec::{RunSpec, StageInput};
use automaldesc_loop::config::{BASE_EVALUATE, FIRST_ITERATION, JUDGE_TRAIN};
use automaldesc_loop::stages::defaults;
use automaldesc_loop::stages::generate::GenerateConfig;
use automaldesc_loop::stages::train::TrainStageConfig;

const MINIMAL: &str = r#"
    name = "r1"
    corpus = "s3://b/unlabelled"
    seed = "s3://b/seed"
    test = "s3://b/test/"
    output = "s3://b/out"
    model = "m.gguf"
"#;

#[test]
fn defaults_are_the_published_settings() {
    let c = LoopConfig::from_toml(MINIMAL).unwrap();
    assert_eq!(c.temperatures, [0.4, 0.6, 0.8]);
    assert_eq!(
        (c.max_new_tokens, c.confidence, c.iterations),
        (512, 0.90, 2)
    );
    let (v1, v2) = (&c.adapter[0], &c.adapter[1]);
    assert_eq!(
        (v1.rank, v1.alpha, v1.dropout, v1.epochs),
        (8, 16.0, 0.05, 15)
    );
    assert_eq!(
        (v2.rank, v2.alpha, v2.dropout, v2.epochs),
        (16, 32.0, 0.1, 20)
    );
    assert_eq!(
        (v1.learning_rate, v1.weight_decay, v1.warmup),
        (1e-4, 0.001, 0.05)
    );
    assert_eq!(c.judge(), "m.gguf");
    assert_eq!(c.threshold(1), 0.90);
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let typo = LoopConfig::from_toml(&format!("{MINIMAL}\ntemperature = [0.5]\n"));
    assert!(format!("{:#}", typo.unwrap_err()).contains("temperature"));
    let bad = LoopConfig::from_toml(&format!("{MINIMAL}\nconfidence = 1.5\n"));
    assert!(format!("{:#}", bad.unwrap_err()).contains("[0, 1]"));
    let none = LoopConfig::from_toml(&format!("{MINIMAL}\niterations = 0\n"));
    assert!(format!("{:#}", none.unwrap_err()).contains("at least 1"));
    let name = LoopConfig::from_toml(&MINIMAL.replace("r1", "R 1"));
    assert!(format!("{:#}", name.unwrap_err()).contains("`name`"));
    let adapter = LoopConfig::from_toml(&format!(
        "{MINIMAL}\n[[adapter]]\nrank = 0\nalpha = 1.0\ndropout = 0.0\nepochs = 1\n"
    ));
    assert!(format!("{:#}", adapter.unwrap_err()).contains("rank"));
}

#[test]
fn a_schedule_sets_each_iterations_threshold_and_the_last_entry_holds() {
    let c = LoopConfig::from_toml(&format!(
        "{MINIMAL}\niterations = 3\nconfidence_schedule = [0.95, 0.9]\n"
    ))
    .unwrap();
    assert_eq!(
        [c.threshold(1), c.threshold(2), c.threshold(3)],
        [0.95, 0.9, 0.9]
    );
    let spec = c.run_spec("abc", &[]);
    for k in 1..=3 {
        let s = LoopConfig::stages_of(k);
        let want = c.threshold(k);
        for i in [s.generate, s.judge, s.filter] {
            let got = spec.stages[i as usize].config["min_label_prob"]
                .as_f64()
                .unwrap();
            assert_eq!(got as f32, want, "iteration {k} stage {i}");
        }
    }
}

#[test]
fn every_stage_config_is_its_executors_typed_config_with_the_shared_defaults() {
    use automaldesc_common::run_spec::StageCatalog;
    let c = LoopConfig::from_toml(MINIMAL).unwrap();
    let spec = c.run_spec("abc", &["s1".into()]);
    for (i, stage) in spec.stages.iter().enumerate() {
        crate::cluster_cmd::WorkerCatalog
            .check_stage(&stage.kind, &stage.config)
            .unwrap_or_else(|e| panic!("stage {i} ({}): {e}", stage.kind));
    }
    // Defaults left out of the loop config are the commands' and the executors'.
    let generate: GenerateConfig =
        serde_json::from_value(spec.stages[FIRST_ITERATION as usize + 1].config.clone()).unwrap();
    assert_eq!(generate.top_p, defaults::TOP_P);
    assert_eq!(generate.slots, defaults::SLOTS);
    assert_eq!(generate.max_new_tokens, defaults::MAX_NEW_TOKENS);
    assert_eq!(generate.prompt_budget, defaults::PROMPT_TOKENS);
    assert_eq!(generate.temperatures, defaults::TEMPERATURES);
    assert_eq!(generate.min_label_prob, defaults::MIN_LABEL_PROB);
    let evaluate: GenerateConfig =
        serde_json::from_value(spec.stages[BASE_EVALUATE as usize].config.clone()).unwrap();
    assert_eq!(evaluate.label_only_except, Some(vec!["s1".to_string()]));
    let train: TrainStageConfig =
        serde_json::from_value(spec.stages[FIRST_ITERATION as usize].config.clone()).unwrap();
    assert_eq!(train.prompt_tokens, defaults::PROMPT_TOKENS);
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        annotate: crate::annotate_cmd::AnnotateArgs,
    }
    let cli = Cli::parse_from(["automaldesc", "script.sh"]);
    let sampling = &cli.annotate.sampling;
    assert_eq!(sampling.top_p, generate.top_p);
    assert_eq!(sampling.slots, generate.slots);
    assert_eq!(sampling.max_new_tokens, generate.max_new_tokens);
    assert_eq!(sampling.prompt_budget, generate.prompt_budget);
    assert_eq!(sampling.temperatures, generate.temperatures);
    assert_eq!(sampling.min_label_prob, generate.min_label_prob);
}

#[test]
fn the_run_spec_wires_every_iteration_to_the_one_before() {
    let c = LoopConfig::from_toml(&format!("{MINIMAL}\niterations = 3\n")).unwrap();
    let spec = c.run_spec("abc", &[]);
    spec.validate().unwrap();
    assert_eq!(spec.stages.len(), 3 + 3 * 7);
    assert_eq!(spec.stages[BASE_EVALUATE as usize].kind, "generate");
    let judge_train = &spec.stages[JUDGE_TRAIN as usize];
    assert_eq!(judge_train.kind, "judge-train");
    assert!(judge_train.single_task);
    assert_eq!(
        judge_train.input(),
        StageInput::Url("s3://b/seed/labels".into())
    );
    assert_eq!(
        spec.stages[BASE_REPORT as usize].refs["answers"],
        BASE_EVALUATE
    );
    for k in 1..=3u32 {
        let s = LoopConfig::stages_of(k);
        let kinds: Vec<&str> = [
            s.train,
            s.generate,
            s.judge,
            s.filter,
            s.aggregate,
            s.evaluate,
            s.report,
        ]
        .iter()
        .map(|&i| spec.stages[i as usize].kind.as_str())
        .collect();
        assert_eq!(
            kinds,
            [
                "train",
                "generate",
                "judge",
                "filter",
                "aggregate",
                "generate",
                "report"
            ]
        );
        let train = &spec.stages[s.train as usize];
        assert!(train.single_task);
        let expected_input = if k == 1 {
            StageInput::Url("s3://b/seed".into())
        } else {
            StageInput::Stage(LoopConfig::stages_of(k - 1).aggregate)
        };
        assert_eq!(train.input(), expected_input);
        assert_eq!(
            train.config["train"]["lora"]["rank"],
            if k == 1 { 8 } else { 16 }
        );
        assert_eq!(
            spec.stages[s.generate as usize].input(),
            StageInput::Url("s3://b/unlabelled".into())
        );
        assert_eq!(spec.stages[s.generate as usize].refs["adapter"], s.train);
        assert_eq!(spec.stages[s.judge as usize].refs["judge"], JUDGE_TRAIN);
        assert_eq!(spec.stages[s.evaluate as usize].config["early_stop"], false);
        assert_eq!(
            spec.stages[s.evaluate as usize].input(),
            StageInput::Url("s3://b/test/scripts".into())
        );
        let report = &spec.stages[s.report as usize];
        let (prev_answers, prev_report) = if k == 1 {
            (BASE_EVALUATE, BASE_REPORT)
        } else {
            let p = LoopConfig::stages_of(k - 1);
            (p.evaluate, p.report)
        };
        assert_eq!(report.refs["previous"], prev_answers);
        assert_eq!(report.refs["history"], prev_report);
        assert_eq!(report.refs["funnel"], s.aggregate);
        assert_eq!(
            LoopConfig::stage_name(s.judge),
            format!("iteration {k} judge")
        );
        let agg = &spec.stages[s.aggregate as usize].config;
        assert_eq!(agg["config_hash"], c.hash());
        assert_eq!(agg["base_model_sha256"], "abc");
    }
    // The spec survives TOML (what `--print-spec` writes and `submit` reads).
    let text = toml::to_string(&spec).unwrap();
    assert_eq!(RunSpec::from_toml(&text).unwrap(), spec);
}

#[test]
fn a_stage_open_across_a_resumption_is_marked_in_the_stages_table() {
    use automaldesc_coordinator::lease_manager::StageCounts;
    use automaldesc_coordinator::run_manager::{RunPhase, RunStatus, StageSummary};
    use automaldesc_coordinator::stage_manager::StageTotals;
    let stage = |index: u32, finished_ms: u64| StageSummary {
        index,
        kind: "generate".into(),
        counts: StageCounts {
            total: 1,
            done: 1,
            leased: 0,
            quarantined: 0,
        },
        totals: StageTotals::default(),
        garbage_files_deleted: 0,
        finished_ms,
        troubles: Vec::new(),
    };
    let mut status = RunStatus {
        id: automaldesc_common::ids::RunId("r".into()),
        phase: RunPhase::Succeeded,
        error: String::new(),
        stages: vec![stage(0, 10_000), stage(1, 25_000)],
        stages_total: 2,
        submitted_ms: 0,
        output: String::new(),
        stage_names: Vec::new(),
        resumed_ms: Vec::new(),
    };
    let plain = stages_markdown(&status);
    assert!(
        plain.contains("| 10.0 |") && plain.contains("| 15.0 |"),
        "{plain}"
    );
    assert!(!plain.contains('*'), "{plain}");
    // Taken up again at 12 s: the second stage (10 s to 25 s) was open across it.
    status.resumed_ms = vec![12_000];
    let marked = stages_markdown(&status);
    assert!(marked.contains("| 10.0 |"), "{marked}");
    assert!(marked.contains("| 15.0 * |"), "{marked}");
    assert!(marked.contains("includes the pause"), "{marked}");
}
