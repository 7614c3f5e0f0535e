//! A single-member etcd (Debian's `etcd-server`) on loopback ports with a temporary data
//! directory. Without an `etcd` binary a test skips, saying why; CI sets
//! `AUTOMALDESC_REQUIRE_ETCD=1`, which makes a missing etcd a failure.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use automaldesc_coordinator::state::{EtcdStore, StateStore};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-member etcd on loopback, killed on drop.
pub struct Etcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    pub fn start() -> Option<Self> {
        let present = Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            assert!(
                std::env::var("AUTOMALDESC_REQUIRE_ETCD").map_or(true, |v| v != "1"),
                "etcd is not installed and AUTOMALDESC_REQUIRE_ETCD=1"
            );
            eprintln!("SKIP: no etcd binary (apt-get install etcd-server)");
            return None;
        }
        let mut etcd = Self {
            child: None,
            data: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn();
        Some(etcd)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn spawn(&mut self) {
        let (c, p) = (self.client_port, self.peer_port);
        let log = std::fs::File::create(self.data.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t"])
            .arg("--data-dir")
            .arg(self.data.path().join("data"))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{c}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{c}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{p}"),
            ])
            .args(["--initial-cluster", &format!("t=http://127.0.0.1:{p}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A store once etcd answers (it takes a moment to elect itself leader).
    pub async fn store(&self, namespace: &str) -> EtcdStore {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(store) = EtcdStore::connect(&[self.endpoint()], namespace).await {
                if store.get("ready-probe").await.is_ok() {
                    return store;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not come up: {}",
                std::fs::read_to_string(self.data.path().join("etcd.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
