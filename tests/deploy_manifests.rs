//! The deployment under `deploy/`: the Kubernetes manifests (schemas and references checked
//! offline by `deploy/k8s/validate.py`, then their wiring here), the Dockerfiles and the
//! Grafana dashboard.
//!
//! The manifest tests need `python3` with PyYAML and, for the schemas, the
//! `kubernetes-validate` package (PyPI; it carries the Kubernetes JSON schemas, so nothing is
//! fetched). Without them they say why they skip, or fail when
//! `AUTOMALDESC_REQUIRE_K8S_SCHEMAS=1`. Command-line flags in the manifests are checked
//! against the binary's clap definitions in `src/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A tool the manifest tests need is missing: fail if it is required, else say why we skip.
fn missing(what: &str) {
    if std::env::var("AUTOMALDESC_REQUIRE_K8S_SCHEMAS").as_deref() == Ok("1") {
        panic!("{what} (AUTOMALDESC_REQUIRE_K8S_SCHEMAS=1)");
    }
    eprintln!("skipping the manifest checks: {what}");
}

/// Runs deploy/k8s/validate.py; None (after `missing`) when python3 or a package is absent.
fn validator(args: &[&str]) -> Option<Output> {
    let out = match Command::new("python3")
        .arg(root().join("deploy/k8s/validate.py"))
        .args(args)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            missing(&format!(
                "python3 cannot be run ({e}); it needs PyYAML and kubernetes-validate"
            ));
            return None;
        }
    };
    if out.status.code() == Some(3) {
        missing(String::from_utf8_lossy(&out.stdout).trim());
        return None;
    }
    Some(out)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn manifests_pass_the_offline_validator() {
    let Some(out) = validator(&[]) else { return };
    let report = text(&out);
    assert!(out.status.success(), "deploy/k8s/validate.py:\n{report}");
    assert!(report.starts_with("OK "), "{report}");
    eprintln!("{}", report.trim());
}

/// Every resource of deploy/k8s (kustomize's generated ConfigMap included), parsed by
/// validate.py.
struct Manifests(Vec<Value>);

impl Manifests {
    fn load() -> Option<Self> {
        let out = validator(&["--dump"])?;
        assert!(out.status.success(), "validate.py --dump:\n{}", text(&out));
        let docs: Vec<Value> =
            serde_json::from_slice(&out.stdout).expect("validate.py --dump prints JSON");
        assert!(!docs.is_empty());
        Some(Self(docs))
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("no {kind}/{name} in deploy/k8s"))
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|d| d["kind"] == kind).collect()
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    pod_spec(workload)["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Whether every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

fn pod_labels(workload: &Value) -> &Value {
    &workload["spec"]["template"]["metadata"]["labels"]
}

/// The flags of a container's args after the subcommand: `--flag=value`, `--flag value`,
/// `--flag`.
type Flags = Vec<(String, Option<String>)>;

fn parse_flags(args: &[String]) -> Flags {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        assert!(a.starts_with("--"), "argument {a:?} is not a flag");
        if let Some((f, v)) = a.split_once('=') {
            out.push((f.to_string(), Some(v.to_string())));
        } else if i + 1 < args.len() && !args[i + 1].starts_with("--") {
            out.push((a.clone(), Some(args[i + 1].clone())));
            i += 1;
        } else {
            out.push((a.clone(), None));
        }
        i += 1;
    }
    out
}

fn flag<'a>(flags: &'a Flags, name: &str) -> Option<&'a str> {
    flags
        .iter()
        .find(|(f, _)| f == name)
        .map(|(_, v)| v.as_deref().unwrap_or(""))
}

fn need<'a>(flags: &'a Flags, name: &str, who: &str) -> &'a str {
    flag(flags, name).unwrap_or_else(|| panic!("{who} has no {name}"))
}

/// The port of `host:port` or `scheme://host:port`, with the host.
fn host_port(addr: &str) -> (String, u64) {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr} has no port"));
    (host.to_string(), port.parse().expect("a port number"))
}

fn container_port(c: &Value, name: &str) -> u64 {
    c["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container {} has no port {name}", c["name"]))
}

fn service_port<'a>(svc: &'a Value, name: &str) -> &'a Value {
    svc["spec"]["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("Service {} has no port {name}", svc["metadata"]["name"]))
}

/// Where a file path inside a container comes from: (volume kind, object name, key).
fn mounted(workload: &Value, c: &Value, path: &str) -> (String, String, String) {
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let dir = m["mountPath"].as_str().unwrap();
        let Some(rel) = path.strip_prefix(&format!("{dir}/")) else {
            continue;
        };
        let vol = pod_spec(workload)["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == m["name"]))
            .expect("the mount's volume");
        for (kind, name_field) in [("secret", "secretName"), ("configMap", "name")] {
            let src = &vol[kind];
            if src.is_null() {
                continue;
            }
            let key = match src["items"].as_array() {
                Some(items) => items
                    .iter()
                    .find(|i| i["path"] == rel)
                    .and_then(|i| i["key"].as_str())
                    .unwrap_or_else(|| panic!("{path}: the {kind} volume does not project it"))
                    .to_string(),
                None => rel.to_string(),
            };
            return (kind.into(), src[name_field].as_str().unwrap().into(), key);
        }
        panic!("{path} is mounted from a volume that is neither a Secret nor a ConfigMap");
    }
    panic!("{path} is not under any volume mount of {}", c["name"]);
}

fn has_key(m: &Manifests, kind: &str, name: &str, key: &str) -> bool {
    let obj = match kind {
        "secret" => m.find("Secret", name),
        _ => m.find("ConfigMap", name),
    };
    obj.is_some_and(|o| {
        ["data", "stringData"]
            .iter()
            .any(|f| o[*f].get(key).is_some())
    })
}

/// The clap definitions of the binary: src/, file name and text.
struct ClapSource(Vec<(String, String)>);

impl ClapSource {
    /// The binary's sources (`src/`), where every command and flag is declared.
    fn load() -> Self {
        Self::load_dir(&root().join("src"))
    }

    /// Every `.rs` file under `dir`.
    fn load_dir(dir: &Path) -> Self {
        fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    out.push((name, std::fs::read_to_string(&p).unwrap()));
                }
            }
        }
        let mut files = Vec::new();
        walk(dir, &mut files);
        Self(files)
    }

    /// The text between the `{` after `item` (a struct, enum or fn head) and the closing
    /// `}` at the start of a line, in any file.
    fn body(&self, item: &str) -> &str {
        self.body_in("", item)
    }

    /// Like `body`, in the file named `file` (any file when empty).
    fn body_in(&self, file: &str, item: &str) -> &str {
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        for (_, src) in self
            .0
            .iter()
            .filter(|(name, _)| file.is_empty() || name == file)
        {
            for (at, _) in src.match_indices(item) {
                let after = &src[at + item.len()..];
                if item.ends_with(ident) && after.starts_with(ident) {
                    continue;
                }
                let start = at + item.len() + after.find('{').expect("an opening brace") + 1;
                let len = src[start..].find("\n}").expect("a closing brace");
                return &src[start..start + len];
            }
        }
        panic!("no `{item}` in src/ ({file})");
    }

    /// The long flags of a clap `Args` struct, flattened structs included, with the
    /// attribute text of each.
    fn flags(&self, name: &str) -> Vec<(String, String)> {
        // The binary's own `Cli` and `Command` are in main.rs (the library has another
        // `Command`).
        let file = if name == "Cli" { "main.rs" } else { "" };
        let body = self.body_in(file, &format!("struct {name}"));
        let mut out = Vec::new();
        let (mut attrs, mut cur, mut depth) = (Vec::<String>::new(), String::new(), 0i32);
        for line in body.lines() {
            let t = line.trim();
            if depth > 0 || t.starts_with("#[") {
                cur.push_str(t);
                cur.push(' ');
                depth += t.matches('[').count() as i32 - t.matches(']').count() as i32;
                if depth <= 0 {
                    attrs.push(std::mem::take(&mut cur));
                    depth = 0;
                }
                continue;
            }
            if t.is_empty() || t.starts_with("//") {
                continue;
            }
            let (field, ty) = t
                .trim_start_matches("pub ")
                .split_once(':')
                .unwrap_or_else(|| panic!("struct {name}: cannot read the field {t:?}"));
            let ty = ty.trim().trim_end_matches(',');
            for a in attrs.drain(..) {
                if a.starts_with("#[command(") && a.contains("flatten") {
                    let inner = ty.rsplit("::").next().unwrap();
                    out.extend(self.flags(inner));
                } else if let Some(inner) = a
                    .trim()
                    .strip_prefix("#[arg(")
                    .and_then(|r| r.strip_suffix(")]"))
                {
                    for part in split_top(inner) {
                        let p = part.trim();
                        let long = if p == "long" {
                            Some(field.trim().replace('_', "-"))
                        } else {
                            p.strip_prefix("long")
                                .map(str::trim_start)
                                .and_then(|r| r.strip_prefix('='))
                                .map(|v| v.trim().trim_matches('"').to_string())
                        };
                        if let Some(l) = long {
                            out.push((format!("--{l}"), a.clone()));
                        }
                    }
                }
            }
        }
        out
    }

    /// The flags a subcommand accepts: its own and the global ones of `Cli`, with --help.
    fn accepted(&self, subcommand: &str) -> BTreeSet<String> {
        let variant: String = subcommand
            .split('-')
            .map(|w| w[..1].to_uppercase() + &w[1..])
            .collect();
        let commands = self.body_in("main.rs", "enum Command");
        let line = commands
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("{variant}(")))
            .unwrap_or_else(|| panic!("the binary has no subcommand {subcommand}"));
        let ty = line[variant.len() + 1..]
            .split(')')
            .next()
            .unwrap()
            .rsplit("::")
            .next()
            .unwrap();
        let mut out: BTreeSet<String> = self.flags(ty).into_iter().map(|(f, _)| f).collect();
        out.extend(
            self.flags("Cli")
                .into_iter()
                .filter(|(_, a)| a.contains("global = true"))
                .map(|(f, _)| f),
        );
        out.insert("--help".into());
        out
    }
}

/// Splits on commas outside quotes and brackets.
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut depth, mut quote) = (Vec::new(), 0, 0i32, None::<char>);
    for (i, ch) in s.char_indices() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(ch),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// `key = "value"` of a top-level TOML key (the files here are flat where it matters).
fn toml_str(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("no {key} = \"...\""))
}

/// A container's subcommand and flags, each flag checked against the binary's clap source.
fn command_line(clap: &ClapSource, c: &Value) -> (String, Flags) {
    let args = strs(&c["args"]);
    let sub = args.first().expect("a subcommand").clone();
    let flags = parse_flags(&args[1..]);
    let accepted = clap.accepted(&sub);
    for (f, _) in &flags {
        assert!(
            accepted.contains(f),
            "container {}: `automaldesc {sub}` has no flag {f} (it has {accepted:?})",
            c["name"]
        );
    }
    (sub, flags)
}

fn non_root(workload: &Value, c: &Value) {
    let pod = &pod_spec(workload)["securityContext"];
    assert!(
        pod["runAsNonRoot"] == true || c["securityContext"]["runAsNonRoot"] == true,
        "{}: runAsNonRoot",
        c["name"]
    );
}

#[test]
fn coordinators_workers_and_monitoring_are_wired_together() {
    let Some(m) = Manifests::load() else { return };
    let clap = ClapSource::load();
    let main_rs = read("src/main.rs");

    // --- coordinators: a Job of two (leader and standby through etcd), probes, ports,
    // secrets
    let deploy = m.get("Job", "automaldesc-coordinator");
    let cs = &deploy["spec"];
    assert_eq!(
        (cs["parallelism"].as_u64(), cs["completions"].as_u64()),
        (Some(2), Some(2)),
        "leader and standby, each complete once it exits 0 after the run"
    );
    assert_eq!(pod_spec(deploy)["restartPolicy"], "Never");
    let coordinator_rules = cs["podFailurePolicy"]["rules"].as_array().expect("rules");
    assert!(
        coordinator_rules.iter().any(|r| r["action"] == "Ignore"
            && r["onPodConditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "DisruptionTarget"))),
        "an evicted coordinator is replaced without counting a failure"
    );
    assert!(
        m.all("PodDisruptionBudget").is_empty(),
        "the standby is never Ready: a PDB would forbid evicting the leader"
    );
    let coord = container(deploy, "coordinator");
    non_root(deploy, coord);
    let (sub, cf) = command_line(&clap, coord);
    assert_eq!(sub, "coordinator");
    let who = "the coordinator";

    let etcd_url = need(&cf, "--etcd", who);
    let (etcd_host, etcd_port) = host_port(etcd_url);
    let etcd_svc = m.get("Service", &etcd_host);
    assert!(
        etcd_svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == etcd_port),
        "--etcd {etcd_url}: Service {etcd_host} has no port {etcd_port}"
    );
    let etcd = m.get("StatefulSet", "automaldesc-etcd");
    assert!(selects(&etcd_svc["spec"]["selector"], pod_labels(etcd)));
    assert_eq!(container_port(container(etcd, "etcd"), "client"), etcd_port);
    non_root(etcd, container(etcd, "etcd"));

    let grpc = container_port(coord, "grpc");
    assert_eq!(host_port(need(&cf, "--listen", who)).1, grpc);
    let http = container_port(coord, "http");
    assert_eq!(host_port(need(&cf, "--http-listen", who)).1, http);
    assert_eq!(coord["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(coord["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(coord["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(coord["livenessProbe"]["httpGet"]["port"], "http");

    // JSON logs, through the variable the binary really reads.
    let json_env = coord["env"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["name"] == "AUTOMALDESC_LOG_FORMAT" && e["value"] == "json");
    assert!(
        json_env || flag(&cf, "--log-format") == Some("json"),
        "coordinator logs are not JSON"
    );
    assert!(main_rs.contains("env = \"AUTOMALDESC_LOG_FORMAT\""));

    // The run: the spec of the ConfigMap, under the loop config's name as a fixed run id.
    assert!(
        flag(&cf, "--exit-when-done").is_some(),
        "workers are told to finish only with it"
    );
    let (kind, cm, key) = mounted(deploy, coord, need(&cf, "--run", who));
    assert_eq!(kind, "configMap");
    let spec = m.get("ConfigMap", &cm)["data"][&key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm} has no {key}"))
        .to_string();
    let loop_toml = read("deploy/k8s/run/loop.toml");
    let run_id = need(&cf, "--run-id", who);
    assert_eq!(
        run_id,
        toml_str(&loop_toml, "name"),
        "--run-id must equal the loop's name"
    );
    assert!(
        spec.contains(&format!("run = \"{run_id}\"")),
        "spec.toml was not generated from run/loop.toml (regenerate it with loop --print-spec)"
    );
    assert_eq!(toml_str(&spec, "input"), toml_str(&loop_toml, "corpus"));
    assert_eq!(toml_str(&spec, "output"), toml_str(&loop_toml, "output"));

    // Token and TLS from the Secret.
    let token = mounted(deploy, coord, need(&cf, "--token-file", who));
    assert_eq!(token.0, "secret");
    assert!(has_key(&m, &token.0, &token.1, &token.2), "{token:?}");
    for f in ["--tls-cert", "--tls-key"] {
        let (k, n, key) = mounted(deploy, coord, need(&cf, f, who));
        assert!(k == "secret" && has_key(&m, &k, &n, &key), "{f}: {n}/{key}");
    }

    // One Service for gRPC and HTTP, routed to Ready pods: the leader.
    let svc = m.get("Service", "automaldesc-coordinator");
    assert!(selects(&svc["spec"]["selector"], pod_labels(deploy)));
    assert_eq!(service_port(svc, "grpc")["targetPort"], "grpc");
    assert_eq!(service_port(svc, "http")["targetPort"], "http");
    assert_ne!(
        svc["spec"]["publishNotReadyAddresses"], true,
        "the standby must not get traffic"
    );

    // --- workers: an Indexed Job of GPU pods
    let job = m.get("Job", "automaldesc-workers");
    let js = &job["spec"];
    assert_eq!(js["completionMode"], "Indexed");
    let parallelism = js["parallelism"].as_u64().expect("parallelism");
    assert!(parallelism >= 1);
    assert_eq!(
        js["completions"].as_u64(),
        Some(parallelism),
        "one index per worker"
    );
    assert!(js["backoffLimitPerIndex"].as_u64().is_some_and(|b| b >= 1));
    assert_eq!(pod_spec(job)["restartPolicy"], "Never");
    if !js["podReplacementPolicy"].is_null() {
        assert_eq!(
            js["podReplacementPolicy"], "Failed",
            "the only value allowed with a podFailurePolicy"
        );
    }
    let worker = container(job, "worker");
    non_root(job, worker);
    let limits = &worker["resources"]["limits"];
    assert!(
        limits["nvidia.com/gpu"] == 1 || limits["nvidia.com/gpu"] == "1",
        "a GPU per worker: {limits}"
    );
    let requests = &worker["resources"]["requests"]["nvidia.com/gpu"];
    assert!(
        requests.is_null() || requests == &limits["nvidia.com/gpu"],
        "extended resources: requests = limits"
    );
    assert!(
        pod_spec(job)["tolerations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["key"] == "nvidia.com/gpu"),
        "GPU nodes are usually tainted nvidia.com/gpu"
    );

    let (sub, wf) = command_line(&clap, worker);
    assert_eq!(sub, "worker");
    let who = "the worker";
    let endpoint = need(&wf, "--coordinator", who);
    let (host, port) = host_port(endpoint);
    assert_eq!(
        host, svc["metadata"]["name"],
        "workers dial the coordinator Service"
    );
    assert_eq!(service_port(svc, "grpc")["port"], port);
    if flag(&cf, "--tls-cert").is_some() {
        assert!(
            endpoint.starts_with("https://"),
            "the coordinator serves TLS: {endpoint}"
        );
        let (k, n, key) = mounted(job, worker, need(&wf, "--tls-ca", who));
        assert!(
            k == "secret" && has_key(&m, &k, &n, &key),
            "--tls-ca: {n}/{key}"
        );
    }
    assert_eq!(
        mounted(job, worker, need(&wf, "--token-file", who)),
        token,
        "workers present the coordinator's token"
    );

    // The executors exist in the binary and cover every stage kind of the run spec.
    let executors: BTreeSet<String> = need(&wf, "--executors", who)
        .split(',')
        .map(str::to_string)
        .collect();
    let known: BTreeSet<String> = clap
        .body("fn executors(")
        .lines()
        .filter(|l| l.contains("=> Arc::new("))
        .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
        .map(str::to_string)
        .collect();
    assert!(
        known.len() >= 7,
        "executor names read from the source: {known:?}"
    );
    assert!(
        executors.is_subset(&known),
        "--executors {executors:?}, the binary knows {known:?}"
    );
    let kinds: BTreeSet<String> = spec
        .lines()
        .filter_map(|l| l.trim().strip_prefix("kind = "))
        .map(|k| k.trim_matches('"').to_string())
        .collect();
    assert!(!kinds.is_empty());
    assert!(
        kinds.is_subset(&executors),
        "stage kinds {kinds:?} not all among --executors {executors:?}"
    );

    // Draining: the pod's grace period outlasts the worker's own.
    let grace: f64 = need(&wf, "--grace", who).parse().unwrap();
    let pod_grace = pod_spec(job)["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        pod_grace > grace,
        "terminationGracePeriodSeconds {pod_grace} <= --grace {grace}"
    );

    // Failure policy: disruptions are not failures; a bad command line fails the Job.
    let rules = js["podFailurePolicy"]["rules"]
        .as_array()
        .expect("a podFailurePolicy");
    assert!(
        rules[0]["action"] == "Ignore"
            && rules[0]["onPodConditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "DisruptionTarget")),
        "the first rule ignores DisruptionTarget (preemption, eviction)"
    );
    let on_codes = |action: &str| -> Vec<u64> {
        rules
            .iter()
            .filter(|r| r["action"] == action && !r["onExitCodes"].is_null())
            .flat_map(|r| {
                assert_eq!(r["onExitCodes"]["containerName"], "worker");
                assert_eq!(r["onExitCodes"]["operator"], "In");
                let values: Vec<u64> = r["onExitCodes"]["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                // What the API server requires of `In` values.
                assert!(
                    !values.is_empty()
                        && !values.contains(&0)
                        && values.windows(2).all(|w| w[0] < w[1]),
                    "exit codes must be sorted, unique and non-zero: {values:?}"
                );
                values
            })
            .collect()
    };
    assert!(
        on_codes("FailJob").contains(&2),
        "exit 2 (clap: bad command line) fails the Job"
    );
    assert!(
        main_rs.contains("Cli::parse()"),
        "exit 2 comes from clap's parse()"
    );
    // A worker stopped by SIGTERM before the work is finished exits 143 (the binary's
    // STOPPED_EXIT_CODE), which the policy ignores: the pod is replaced, not counted.
    assert!(
        strs(&worker["command"]).is_empty(),
        "the image's entrypoint runs the binary itself"
    );
    assert!(
        read("src/cluster_cmd.rs").contains("pub const STOPPED_EXIT_CODE: i32 = 143;"),
        "the worker's exit code when stopped"
    );
    assert!(on_codes("Ignore").contains(&143));

    // Both the coordinators and the workers reach S3 with the same credentials.
    let env_from = |c: &Value| -> Vec<String> {
        c["envFrom"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["secretRef"]["name"].as_str().map(str::to_string))
            .collect()
    };
    let s3 = env_from(coord);
    assert!(!s3.is_empty() && s3 == env_from(worker));
    assert!(has_key(&m, "secret", &s3[0], "AWS_ACCESS_KEY_ID"));

    // --- the ServiceMonitor scrapes /metrics on the http port with the same token
    let sm = m.get("ServiceMonitor", "automaldesc-coordinator");
    assert!(selects(
        &sm["spec"]["selector"]["matchLabels"],
        &svc["metadata"]["labels"]
    ));
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(ep["port"], "http");
    let cred = if ep["authorization"].is_null() {
        &ep["bearerTokenSecret"]
    } else {
        assert_eq!(ep["authorization"]["type"], "Bearer");
        &ep["authorization"]["credentials"]
    };
    assert_eq!(
        (
            cred["name"].as_str().unwrap(),
            cred["key"].as_str().unwrap()
        ),
        (token.1.as_str(), token.2.as_str()),
        "the ServiceMonitor's token is the coordinators' token"
    );

    // --- images: the coordinator on the CPU image, the workers on the CUDA one, both
    // with the user the Dockerfiles create and the workers in the image's directory.
    assert_eq!(coord["image"], "automaldesc");
    assert_eq!(worker["image"], "automaldesc-cuda");
    for (file, w) in [("Dockerfile", deploy), ("Dockerfile.cuda", job)] {
        let d = Dockerfile::load(file);
        assert_eq!(
            pod_spec(w)["securityContext"]["runAsUser"].as_u64(),
            Some(d.uid()),
            "{file}"
        );
        if file == "Dockerfile.cuda" {
            assert_eq!(worker["workingDir"], d.last("WORKDIR").as_str());
            // The GPU kernels' cache directory is writable: on an emptyDir mount.
            let cache = d
                .final_stage()
                .iter()
                .find_map(|(op, a)| (op == "ENV").then(|| a.strip_prefix("XDG_CACHE_HOME="))?)
                .expect("Dockerfile.cuda sets XDG_CACHE_HOME");
            let vols = pod_spec(job)["volumes"].as_array().unwrap();
            assert!(
                worker["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|mnt| cache.starts_with(mnt["mountPath"].as_str().unwrap())
                        && vols
                            .iter()
                            .any(|v| v["name"] == mnt["name"] && !v["emptyDir"].is_null())),
                "XDG_CACHE_HOME {cache} is not on an emptyDir of the worker"
            );
        }
    }
    for w in m.all("Deployment").into_iter().chain(m.all("Job")) {
        for c in pod_spec(w)["containers"].as_array().unwrap() {
            non_root(w, c);
        }
    }
}

/// A Dockerfile's instructions (continuations joined, comments dropped).
struct Dockerfile(Vec<(String, String)>);

impl Dockerfile {
    fn load(name: &str) -> Self {
        let text = read(&format!("deploy/docker/{name}"));
        let mut out = Vec::new();
        let mut cur = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
                continue;
            }
            match t.strip_suffix('\\') {
                Some(part) => {
                    cur.push_str(part);
                    cur.push(' ');
                }
                None => {
                    cur.push_str(t);
                    let (op, rest) = cur.split_once(' ').unwrap_or((&cur, ""));
                    out.push((op.to_uppercase(), rest.trim().to_string()));
                    cur.clear();
                }
            }
        }
        Self(out)
    }

    /// The instructions of the final stage.
    fn final_stage(&self) -> &[(String, String)] {
        let at = self.0.iter().rposition(|(op, _)| op == "FROM").unwrap();
        &self.0[at..]
    }

    fn last(&self, op: &str) -> String {
        self.final_stage()
            .iter()
            .rev()
            .find(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no {op} in the final stage"))
    }

    fn uid(&self) -> u64 {
        let user = self.last("USER");
        user.split(':')
            .next()
            .unwrap()
            .parse()
            .expect("a numeric USER")
    }
}

/// Whether .dockerignore leaves `path` in the build context (the pattern forms used there:
/// a path and everything under it, and `**/*.ext`).
fn in_context(ignore: &str, path: &str) -> bool {
    !ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|p| {
            let p = p.trim_start_matches('/').trim_end_matches('/');
            match p.strip_prefix("**/*") {
                Some(suffix) => path.ends_with(suffix),
                None => {
                    assert!(
                        !p.contains('*') && !p.starts_with('!'),
                        "in_context() does not know the pattern {p}"
                    );
                    path == p || path.starts_with(&format!("{p}/"))
                }
            }
        })
}

#[test]
fn dockerfiles_build_what_the_manifests_run() {
    let ignore = read(".dockerignore");
    let cargo = read("Cargo.toml");
    // What `COPY . .` must bring for `cargo build`: the manifests, the members, the patch.
    // The root package is the binary: its sources beside the workspace manifest.
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".to_string(),
        "src/main.rs".to_string(),
        "src/lib.rs".to_string(),
    ];
    let members = cargo
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("workspace members");
    needed.extend(
        members
            .split('"')
            .skip(1)
            .step_by(2)
            .map(|m| format!("{m}/Cargo.toml")),
    );
    needed.extend(cargo.lines().filter_map(|l| {
        let (_, rest) = l.split_once("path = \"")?;
        Some(format!("{}/Cargo.toml", rest.split('"').next()?))
    }));
    assert!(needed
        .iter()
        .any(|n| n.starts_with("deploy/cubecl-llvm-stub")));

    let loop_toml = read("deploy/k8s/run/loop.toml");
    let model = toml_str(&loop_toml, "model");
    assert!(
        !model.starts_with('/'),
        "run specs name the model relative to WORKDIR"
    );
    let mut sums = BTreeSet::new();
    for name in ["Dockerfile", "Dockerfile.cuda"] {
        let d = Dockerfile::load(name);
        let all = |op: &str| -> Vec<&String> {
            d.0.iter()
                .filter(|(o, _)| o == op)
                .map(|(_, a)| a)
                .collect()
        };
        for copy in all("COPY") {
            let words: Vec<&str> = copy.split_whitespace().collect();
            if words.iter().any(|w| w.starts_with("--from=")) {
                continue;
            }
            let srcs: Vec<&str> = words[..words.len() - 1]
                .iter()
                .filter(|w| !w.starts_with("--"))
                .copied()
                .collect();
            for src in srcs {
                if src == "." {
                    for n in &needed {
                        assert!(root().join(n).is_file(), "{n} is missing");
                        assert!(
                            in_context(&ignore, n),
                            "{name}: .dockerignore drops {n}, which the build needs"
                        );
                    }
                } else {
                    assert!(
                        root().join(src).exists(),
                        "{name}: COPY {src}: no such file"
                    );
                    assert!(
                        in_context(&ignore, src),
                        "{name}: .dockerignore drops {src}"
                    );
                }
            }
        }
        let runs = all("RUN");
        let build = runs
            .iter()
            .find(|r| r.contains("cargo build"))
            .expect("a cargo build");
        let words: Vec<&str> = build.split_whitespace().collect();
        assert!(
            words.contains(&"--release") && words.windows(2).any(|w| w == ["-p", "automaldesc"]),
            "{name}: a release build of the automaldesc package"
        );
        assert!(
            build.contains("--locked"),
            "{name}: build what Cargo.lock says"
        );
        assert_eq!(
            build.contains("--features cuda"),
            name.ends_with(".cuda"),
            "{name}"
        );
        assert!(
            runs.iter().any(|r| r.contains("protobuf-compiler")),
            "{name}: protoc"
        );
        let fetch = runs
            .iter()
            .find(|r| r.contains("deploy/fetch_model.sh"))
            .expect("the model is fetched");
        let sum = fetch
            .split_whitespace()
            .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
            .expect("the model's sha256 is checked");
        sums.insert(sum.to_string());

        // The final stage: non-root, the binary as entrypoint, the model where run specs
        // look for it (relative to the working directory).
        let uid = d.uid();
        assert!(uid > 0, "{name}: USER is root");
        assert_eq!(d.last("ENTRYPOINT"), "[\"automaldesc\"]", "{name}");
        let workdir = d.last("WORKDIR");
        let model_dest = format!("{workdir}/{model}");
        assert!(
            d.final_stage().iter().any(|(op, a)| op == "COPY"
                && a.contains("--from=")
                && a.ends_with(&format!(" {model_dest}"))),
            "{name}: the model is not copied to {model_dest}"
        );
        let from = &d.final_stage()[0].1;
        if name.ends_with(".cuda") {
            assert!(
                from.contains("CUDA_RUNTIME_IMAGE"),
                "{name}: the CUDA runtime base (NVRTC)"
            );
            let base =
                d.0.iter()
                    .find(|(op, a)| op == "ARG" && a.starts_with("CUDA_RUNTIME_IMAGE="))
                    .map(|(_, a)| a.clone())
                    .expect("ARG CUDA_RUNTIME_IMAGE");
            assert!(
                base.contains("nvidia/cuda:") && base.contains("-runtime-"),
                "{base}: the runtime flavour carries NVRTC"
            );
            assert!(runs.iter().any(|r| r.contains("libnvrtc")));
        }
    }
    assert_eq!(sums.len(), 1, "both images check the same model");
    let sum = sums.iter().next().unwrap();
    // The run spec records the base model's sha256 (loop --print-spec): the images' model.
    let spec = read("deploy/k8s/run/spec.toml");
    let recorded: BTreeSet<String> = spec
        .lines()
        .filter_map(|l| l.trim().strip_prefix("base_model_sha256 = "))
        .map(|v| v.trim_matches('"').to_string())
        .collect();
    assert_eq!(
        recorded,
        BTreeSet::from([sum.clone()]),
        "run/spec.toml was made with another model than the images carry"
    );
    let local = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if model.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf") && local.is_file() {
        let bytes = std::fs::read(&local).unwrap();
        assert_eq!(
            &automaldesc_common::sha256_hex(&bytes),
            sum,
            "the Dockerfiles' sha256 is not the model deploy/fetch_model.sh fetches"
        );
    }
}

/// The metrics the coordinator's /metrics exports, by name (the dashboard's contract).
const METRICS: [&str; 24] = [
    "automaldesc_runs",
    "automaldesc_stage_tasks",
    "automaldesc_stage_scripts_total",
    "automaldesc_stage_scripts_done",
    "automaldesc_stage_rows_out",
    "automaldesc_stage_scripts_quarantined",
    "automaldesc_stage_lease_expiries",
    "automaldesc_stage_failed_attempts",
    "automaldesc_stage_refused_completions",
    "automaldesc_stage_tokens",
    "automaldesc_stage_duration_seconds",
    "automaldesc_stage_eta_seconds",
    "automaldesc_workers",
    "automaldesc_worker_info",
    "automaldesc_worker_leases",
    "automaldesc_worker_tokens_total",
    "automaldesc_worker_scripts_total",
    "automaldesc_worker_tokens_per_second",
    "automaldesc_worker_scripts_per_second",
    "automaldesc_worker_heartbeat_age_seconds",
    "automaldesc_worker_model_load_seconds_total",
    "automaldesc_worker_model_loads_total",
    "automaldesc_tokens_per_second",
    "automaldesc_coordinator_leader",
];

/// The `automaldesc_*` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("automaldesc_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn grafana_dashboard_uses_only_exported_metrics() {
    let dash: Value = serde_json::from_str(&read("deploy/grafana/automaldesc.json"))
        .expect("deploy/grafana/automaldesc.json is JSON");
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let run = var("run");
    assert_eq!(run["datasource"]["uid"], "${datasource}");
    let run_query = run["query"]["query"].as_str().unwrap_or_default();
    assert!(
        run_query.starts_with("label_values(") && run_query.ends_with(", run)"),
        "{run_query}"
    );

    let panels = dash["panels"].as_array().expect("panels");
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(p["id"].as_u64().expect("an id")),
            "panel id repeats: {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{title} is wider than the dashboard");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = t["expr"].as_str().expect("a PromQL expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr}");
            for n in &names {
                assert!(
                    METRICS.contains(&n.as_str()),
                    "{title}: {n} is not exported by the coordinator"
                );
                if n.starts_with("automaldesc_stage_") {
                    assert!(
                        expr.contains("run=~\"$run\""),
                        "{title}: not filtered by $run: {expr}"
                    );
                }
            }
            if expr.contains("rate(") {
                assert!(expr.contains("[$__rate_interval]"), "{title}: {expr}");
            }
            used.extend(names);
        }
    }
    let unused: Vec<_> = METRICS.iter().filter(|m| !used.contains(**m)).collect();
    assert!(unused.is_empty(), "no panel shows {unused:?}");

    // The contract holds on the exporter's side: each name is written by coordinator/src.
    let sources: String = ClapSource::load_dir(&root().join("coordinator/src"))
        .0
        .into_iter()
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join("\n");
    for m in METRICS {
        let written = sources.match_indices(m).any(|(at, _)| {
            !sources[at + m.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        });
        assert!(written, "coordinator/src does not export {m}");
    }
}
