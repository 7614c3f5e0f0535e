use super::*;
use automaldesc_loop::config::LoopConfig;

fn loop_spec(iterations: u32) -> RunSpec {
    let cfg = LoopConfig::from_toml(&format!(
        "name = \"r1\"\ncorpus = \"c\"\nseed = \"s\"\ntest = \"t\"\noutput = \"o\"\nmodel = \"m\"\niterations = {iterations}\n"
    ))
    .unwrap();
    cfg.run_spec("abc", &[])
}

fn facts(phase: RunPhase, stage: u32, iterations: u32) -> RunFacts {
    RunFacts {
        spec: loop_spec(iterations),
        phase,
        error: if phase == RunPhase::Failed {
            "out of memory".into()
        } else {
            String::new()
        },
        stage,
    }
}

#[test]
fn an_iterations_stages_are_found_by_kind_and_config_as_the_loop_lays_them_out() {
    let spec = loop_spec(3);
    assert_eq!(iterations(&spec), [1, 2, 3]);
    for k in 1..=3 {
        let s = LoopConfig::stages_of(k);
        assert_eq!(
            locate("r1", &spec, k).unwrap(),
            ExportStages {
                iteration: k,
                filter: s.filter,
                aggregate: s.aggregate,
                report: s.report,
            }
        );
    }
}

#[test]
fn a_missing_iteration_and_a_run_without_iterations_are_named() {
    let err = locate("r1", &loop_spec(2), 3).unwrap_err().to_string();
    assert_eq!(err, "run r1 has no iteration 3: its iterations are 1 to 2");
    let err = locate("r1", &loop_spec(2), 0).unwrap_err().to_string();
    assert!(err.contains("no iteration 0"), "{err}");
    let mut echo = loop_spec(1);
    echo.stages.retain(|s| s.kind != "aggregate");
    let err = locate("r1", &echo, 1).unwrap_err().to_string();
    assert_eq!(
        err,
        "run r1 is not a self-training run: its spec has no aggregate stage"
    );
}

#[test]
fn an_aggregate_stage_that_does_not_read_a_filter_stage_is_refused() {
    let mut spec = loop_spec(1);
    let a = LoopConfig::stages_of(1).aggregate as usize;
    spec.stages[a].input = Some("stage:0".into());
    let err = locate("r1", &spec, 1).unwrap_err().to_string();
    assert!(
        err.contains("reads stage 1, which is not a filter stage"),
        "{err}"
    );
}

#[test]
fn a_running_run_is_refused_and_a_failed_one_only_for_the_iterations_it_completed() {
    let two = LoopConfig::stages_of(2);
    let one = LoopConfig::stages_of(1);
    let f = facts(RunPhase::Running, two.generate, 2);
    let st = locate("r1", &f.spec, 1).unwrap();
    let err = check_finished("r1", &f, &st).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "run r1 is still running (stage {} of 17); export it once it has finished",
            two.generate + 1
        )
    );
    let done = facts(RunPhase::Succeeded, two.report, 2);
    check_finished("r1", &done, &locate("r1", &done.spec, 2).unwrap()).unwrap();

    // Failed in iteration 2: iteration 1 is complete, iteration 2 is not.
    let failed = facts(RunPhase::Failed, two.judge, 2);
    check_finished("r1", &failed, &locate("r1", &failed.spec, 1).unwrap()).unwrap();
    let err = check_finished("r1", &failed, &locate("r1", &failed.spec, 2).unwrap())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "run r1 failed at stage {} of 17 (out of memory) before iteration 2 was complete; \
             iteration 1 is complete (--iteration 1)",
            two.judge + 1
        )
    );
    // Cancelled during iteration 1's report: nothing is complete.
    let cancelled = facts(RunPhase::Cancelled, one.report, 2);
    let err = check_finished("r1", &cancelled, &locate("r1", &cancelled.spec, 1).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with(&format!(
            "was cancelled at stage {} of 17 before iteration 1 was complete",
            one.report + 1
        )),
        "{err}"
    );
}
