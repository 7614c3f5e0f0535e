use std::time::Duration;

use super::planning::stage_policy;
use super::*;
use automaldesc_common::run_spec::StageConfig;

#[test]
fn single_task_stages_are_never_speculated() {
    let policy = LeasePolicy {
        speculate_after: Some(Duration::from_secs(300)),
        ..LeasePolicy::default()
    };
    let spec = RunSpec {
        input: "a".into(),
        output: "b".into(),
        task_bytes: 1,
        stages: vec![
            StageConfig::new("generate", serde_json::json!({})),
            StageConfig {
                single_task: true,
                ..StageConfig::new("train", serde_json::json!({}))
            },
        ],
        limits: Default::default(),
    };
    assert_eq!(stage_policy(policy, &spec, 0), policy);
    let single = stage_policy(policy, &spec, 1);
    assert_eq!(single.speculate_after, None);
    assert_eq!(single.ttl, policy.ttl);
    assert_eq!(single.max_attempts, policy.max_attempts);
}
