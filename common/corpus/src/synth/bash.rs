//! Bash: benign families.

use rand::Rng;

use super::bash_common::{args, header, helpers, logger};
use super::names::{self, fill, pick, R};
use super::{Draft, Family};

pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "log-rotation",
        description: "A log rotation job that compresses and prunes application logs",
        gen: log_rotation,
    },
    Family {
        name: "backup-archive",
        description: "A backup script that archives data and ships it to a backup host",
        gen: backup,
    },
    Family {
        name: "vendor-installer",
        description: "A vendor installer that downloads and sets up a command-line tool",
        gen: vendor_installer,
    },
    Family {
        name: "ci-build",
        description: "A continuous-integration build and test script",
        gen: ci_build,
    },
    Family {
        name: "health-check",
        description: "A service health check that probes endpoints and alerts on failure",
        gen: health_check,
    },
    Family {
        name: "user-provisioning",
        description: "A user provisioning tool for Linux servers",
        gen: user_provisioning,
    },
];

fn log_rotation(r: &mut R) -> Draft {
    let app = names::product(r);
    let dir = format!("/var/log/{app}");
    let keep = r.random_range(3..30);
    let size = pick(r, &["10M", "50M", "100M", "200M"]);
    let (lg, l) = logger(r);
    let mut c = header(
        r,
        &format!("Rotate {app} logs; keep {keep} compressed generations"),
        true,
    );
    c.push_str(&lg);
    c.push_str(&helpers(r, 3));
    c.push_str(&args(
        r,
        &[
            ("dir", "LOG_DIR", &dir),
            ("keep", "KEEP", &keep.to_string()),
        ],
    ));
    c.push_str(&fill(
        r#"MAX_SIZE="@SIZE@"

rotate_file() {
    local f="$1"
    for i in $(seq $((KEEP - 1)) -1 1); do
        [ -f "$f.$i.gz" ] && mv -f "$f.$i.gz" "$f.$((i + 1)).gz"
    done
    cp "$f" "$f.1" && : > "$f"
    gzip -9 "$f.1"
    @L@ "rotated $f"
}

find "$LOG_DIR" -maxdepth 1 -name '*.log' -size +"$MAX_SIZE" | while read -r f; do
    rotate_file "$f"
done

find "$LOG_DIR" -name '*.gz' -mtime +@KEEP@ -print -delete
systemctl kill -s HUP @APP@.service 2>/dev/null || true
@L@ "rotation finished for $LOG_DIR"
"#,
        &[
            ("SIZE", size),
            ("L", l),
            ("KEEP", &keep.to_string()),
            ("APP", app),
        ],
    ));
    Draft {
        content: c,
        purpose: format!("rotates the {app} logs in {dir}, compressing old files with gzip and keeping {keep} generations"),
        steps: vec![
            format!("reads the --dir and --keep options, defaulting to {dir} and {keep}"),
            format!("finds every .log file larger than {size} and shifts the numbered .gz copies up by one"),
            "copies the live log to .1, truncates the original in place and compresses the copy with gzip -9".into(),
            format!("deletes compressed archives older than {keep} days with find -delete"),
            format!("sends SIGHUP to {app}.service through systemctl kill so the daemon reopens its log"),
        ],
        effects: vec![format!("Only files under {dir} are touched, and the service keeps writing to the same path.")],
        behaviours: vec!["Rotates and compresses log files".into()],
        iocs: vec![dir, format!("{app}.service"), "gzip -9".into()],
    }
}

fn backup(r: &mut R) -> Draft {
    let src = names::app_dir(r);
    let host = names::internal_host(r);
    let user = names::user(r);
    let db = names::db_name(r);
    let dest = format!("/backups/{}", names::word(r));
    let days = r.random_range(5..60);
    let (dump_cmd, dump_tool, engine) = match r.random_range(0..3) {
        0 => (
            "pg_dump --format=custom --no-owner \"$DB_NAME\" > \"$WORK_DIR/$DB_NAME-$STAMP.dump\"",
            "pg_dump --format=custom --no-owner",
            "PostgreSQL",
        ),
        1 => (
            "mysqldump --single-transaction --routines \"$DB_NAME\" | gzip > \"$WORK_DIR/$DB_NAME-$STAMP.sql.gz\"",
            "mysqldump --single-transaction piped through gzip",
            "MySQL",
        ),
        _ => (
            "mongodump --db \"$DB_NAME\" --archive=\"$WORK_DIR/$DB_NAME-$STAMP.archive\" --gzip",
            "mongodump --archive --gzip",
            "MongoDB",
        ),
    };
    let (lg, l) = logger(r);
    let mut c = header(
        r,
        "Nightly backup: database dump plus application files",
        true,
    );
    c.push_str(&lg);
    c.push_str(&helpers(r, 4));
    c.push_str(&fill(
        r#"SRC_DIR="@SRC@"
DB_NAME="@DB@"
REMOTE="@USER@@@HOST@:@DEST@"
STAMP=$(date +%Y%m%d-%H%M)
WORK_DIR=$(mktemp -d)

dump_database() {
    @L@ "dumping $DB_NAME"
    @DUMP@
}

archive_files() {
    @L@ "archiving $SRC_DIR"
    tar --exclude='*.tmp' -czf "$WORK_DIR/files-$STAMP.tar.gz" -C "$(dirname "$SRC_DIR")" "$(basename "$SRC_DIR")"
    sha256sum "$WORK_DIR"/* > "$WORK_DIR/SHA256SUMS"
}

ship() {
    rsync -az --partial -e "ssh -o BatchMode=yes" "$WORK_DIR/" "$REMOTE/$STAMP/"
    ssh -o BatchMode=yes "@USER@@@HOST@" "find @DEST@ -maxdepth 1 -mtime +@DAYS@ -exec rm -rf {} +"
}

dump_database
archive_files
ship
rm -rf "$WORK_DIR"
@L@ "backup $STAMP complete"
"#,
        &[
            ("DUMP", dump_cmd),("SRC", &src), ("DB", &db), ("USER", user), ("HOST", &host), ("DEST", &dest), ("L", l), ("DAYS", &days.to_string())],
    ));
    Draft {
        content: c,
        purpose: format!("backs up the {db} {engine} database and the files in {src} to {host}"),
        steps: vec![
            "creates a temporary work directory with mktemp -d and a timestamp for the run".into(),
            format!("dumps {db} with {dump_tool}"),
            format!("archives {src} with tar -czf and records SHA256SUMS for the results"),
            format!("copies the work directory with rsync over ssh in BatchMode to {user}@{host}:{dest}"),
            format!("prunes remote backups older than {days} days with a remote find command"),
        ],
        effects: vec![format!("The host {host} accumulates one dated directory per run while local temporary data is removed.")],
        behaviours: vec!["Backs up a database and files to a remote host".into()],
        iocs: vec![host, src, dest, dump_tool.split(' ').next().unwrap_or("tar").to_string()],
    }
}

fn vendor_installer(r: &mut R) -> Draft {
    let tool = names::product(r);
    let host = names::vendor_host(r);
    let ver = names::version(r);
    let prefix = pick(r, &["/usr/local/bin", "/opt/bin", "$HOME/.local/bin"]);
    let pipe = r.random_bool(0.4);
    let mut c = header(r, &format!("{tool} installer"), true);
    if pipe {
        c.push_str(&fill(
            "# Install the signing key and repository via the vendor's bootstrap script\ncurl -fsSL https://@HOST@/install.sh | sh -s -- --version @VER@\n\n",
            &[("HOST", &host), ("VER", &ver)],
        ));
    }
    c.push_str(&helpers(r, 2));
    c.push_str(&fill(
        r#"VERSION="${VERSION:-@VER@}"
PREFIX="${PREFIX:-@PREFIX@}"
BASE_URL="https://@HOST@/@TOOL@/v${VERSION}"

detect_platform() {
    local os arch
    os=$(uname -s | tr '[:upper:]' '[:lower:]')
    arch=$(uname -m)
    case "$arch" in
        x86_64|amd64) arch=amd64 ;;
        aarch64|arm64) arch=arm64 ;;
        *) echo "unsupported architecture: $arch" >&2; exit 1 ;;
    esac
    echo "${os}-${arch}"
}

PLATFORM=$(detect_platform)
TMP=$(mktemp -d)
echo "Downloading @TOOL@ ${VERSION} for ${PLATFORM}..."
curl -fsSL -o "$TMP/@TOOL@.tar.gz" "$BASE_URL/@TOOL@-${PLATFORM}.tar.gz"
curl -fsSL -o "$TMP/checksums.txt" "$BASE_URL/checksums.txt"
(cd "$TMP" && grep "@TOOL@-${PLATFORM}.tar.gz" checksums.txt | sed 's/@TOOL@-.*/@TOOL@.tar.gz/' | sha256sum -c -)
tar -xzf "$TMP/@TOOL@.tar.gz" -C "$TMP"
install -m 0755 "$TMP/@TOOL@" "$PREFIX/@TOOL@"
rm -rf "$TMP"
echo "@TOOL@ installed to $PREFIX/@TOOL@"
"$PREFIX/@TOOL@" --version
"#,
        &[("VER", &ver), ("PREFIX", prefix), ("HOST", &host), ("TOOL", tool)],
    ));
    let mut steps = Vec::new();
    if pipe {
        steps.push(format!("pipes https://{host}/install.sh from curl -fsSL straight into sh to register the vendor repository"));
    }
    steps.extend([
        "maps uname -s and uname -m output to a platform string such as linux-amd64".to_string(),
        format!("downloads the {tool} {ver} tarball and checksums.txt from https://{host}/{tool}/"),
        "verifies the archive with sha256sum -c before extracting it".into(),
        format!("installs the binary with install -m 0755 into {prefix} and prints its version"),
    ]);
    Draft {
        content: c,
        purpose: format!(
            "installs version {ver} of the {tool} command-line tool from the vendor site {host}"
        ),
        steps,
        effects: vec![format!(
            "The only lasting change is the {tool} binary in {prefix}{}.",
            if pipe {
                ", plus whatever the vendor bootstrap script configures; piping a download into sh is the vendor's documented install path here"
            } else {
                ""
            }
        )],
        behaviours: vec!["Downloads and installs vendor software".into()],
        iocs: vec![host, prefix.to_string(), "sha256sum -c".into()],
    }
}

fn ci_build(r: &mut R) -> Draft {
    let app = names::product(r);
    let reg = format!("registry.{}.com", names::company(r));
    let lang = r.random_range(0..3);
    let (build, test, kind) = match lang {
        0 => (
            "cargo build --release --locked",
            "cargo test --all --locked",
            "Rust",
        ),
        1 => (
            "npm ci && npm run build",
            "npm test -- --ci --reporters=default",
            "Node.js",
        ),
        _ => (
            "go build -trimpath -o bin/@APP@ ./cmd/@APP@",
            "go test -race ./...",
            "Go",
        ),
    };
    let build = build.replace("@APP@", app);
    let (lg, l) = logger(r);
    let mut c = header(r, &format!("CI pipeline for {app}"), true);
    c.push_str(&lg);
    c.push_str(&helpers(r, 3));
    c.push_str(&fill(
        r#"GIT_SHA=$(git rev-parse --short HEAD)
BRANCH="${CI_BRANCH:-$(git rev-parse --abbrev-ref HEAD)}"
IMAGE="@REG@/@APP@:${GIT_SHA}"

stage() { @L@ "==> $*"; }

stage "lint"
shellcheck scripts/*.sh || true

stage "build"
@BUILD@

stage "test"
@TEST@ 2>&1 | tee test-output.log

stage "image"
docker build --pull -t "$IMAGE" --label "git.sha=${GIT_SHA}" .
if [ "$BRANCH" = "main" ]; then
    docker push "$IMAGE"
    docker tag "$IMAGE" "@REG@/@APP@:latest"
    docker push "@REG@/@APP@:latest"
fi
@L@ "pipeline finished for $GIT_SHA on $BRANCH"
"#,
        &[
            ("REG", &reg),
            ("APP", app),
            ("BUILD", &build),
            ("TEST", test),
            ("L", l),
        ],
    ));
    Draft {
        content: c,
        purpose: format!("runs the continuous-integration pipeline of the {kind} project {app}"),
        steps: vec![
            "resolves the short commit hash with git rev-parse and the current branch".into(),
            format!("builds the project with {build}"),
            format!("runs {test} and keeps the output in test-output.log"),
            format!("builds a Docker image tagged {reg}/{app} with the commit hash and pushes it, plus a latest tag, only on main"),
        ],
        effects: vec!["Its footprint is build artefacts in the workspace and images in the company registry.".into()],
        behaviours: vec!["Builds, tests and publishes software".into()],
        iocs: vec![reg, "docker push".into()],
    }
}

fn health_check(r: &mut R) -> Draft {
    let n = r.random_range(2..6);
    let hosts: Vec<String> = (0..n).map(|_| names::internal_host(r)).collect();
    let port = pick(r, &[80, 443, 8080, 8443, 9090, 3000]);
    let hook = format!(
        "https://hooks.{}.com/services/{}",
        names::company(r),
        names::token(r, 12)
    );
    let (lg, l) = logger(r);
    let mut c = header(
        r,
        "Probe service health endpoints and alert the on-call channel",
        false,
    );
    c.push_str(&lg);
    c.push_str(&format!(
        "HOSTS=({})\nPORT={port}\nWEBHOOK=\"{hook}\"\nFAILED=()\n\n",
        hosts.join(" ")
    ));
    c.push_str(&fill(
        r#"check_host() {
    local h="$1" code
    code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "http://$h:$PORT/healthz" || echo 000)
    if [ "$code" != "200" ]; then
        @L@ "$h unhealthy (HTTP $code)"
        FAILED+=("$h")
    fi
    local load
    load=$(ssh -o ConnectTimeout=3 "$h" "cut -d' ' -f1 /proc/loadavg" 2>/dev/null || echo "?")
    @L@ "$h load=$load"
}

for h in "${HOSTS[@]}"; do
    check_host "$h"
done

df -P / | awk 'NR==2 && $5+0 > 90 { print "root filesystem at " $5 }'

if [ ${#FAILED[@]} -gt 0 ]; then
    curl -s -X POST -H 'Content-Type: application/json' \
        -d "{\"text\": \"health check failed: ${FAILED[*]}\"}" "$WEBHOOK"
    exit 2
fi
"#,
        &[("L", l)],
    ));
    Draft {
        content: c,
        purpose: format!("checks the health of {n} internal services and alerts a chat webhook when any fail"),
        steps: vec![
            format!("requests http://HOST:{port}/healthz on each of {} with a five-second curl timeout", list(&hosts)),
            "reads /proc/loadavg over ssh for each host and logs it".into(),
            "prints a warning when df -P shows the root filesystem above 90 percent".into(),
            format!("posts a JSON message naming the failed hosts to {hook} and exits with status 2"),
        ],
        effects: vec!["Nothing on the probed hosts changes; the script only reads status and sends one alert.".into()],
        behaviours: vec!["Monitors service health".into()],
        iocs: vec![hosts[0].clone(), "/healthz".into(), hook],
    }
}

fn list(v: &[String]) -> String {
    v.join(", ")
}

fn user_provisioning(r: &mut R) -> Draft {
    let group = pick(r, &["developers", "ops", "analysts", "support", "dbadmins"]);
    let shell = pick(r, &["/bin/bash", "/bin/zsh"]);
    let keys_url = format!("https://git.{}.com/api/users", names::company(r));
    let mut c = header(
        r,
        "Create or update local accounts from a roster file",
        true,
    );
    c.push_str(&helpers(r, 3));
    c.push_str(&args(
        r,
        &[
            ("roster", "ROSTER", "/etc/provision/users.csv"),
            ("group", "GROUP", group),
        ],
    ));
    c.push_str(&fill(
        r#"[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
getent group "$GROUP" >/dev/null || groupadd "$GROUP"

provision_user() {
    local name="$1" full="$2"
    if id "$name" >/dev/null 2>&1; then
        usermod -a -G "$GROUP" "$name"
    else
        useradd -m -s @SHELL@ -c "$full" -G "$GROUP" "$name"
        passwd -e "$name" >/dev/null
    fi
    install -d -m 700 -o "$name" -g "$name" "/home/$name/.ssh"
    curl -fsS "@KEYS@/$name.keys" -o "/home/$name/.ssh/authorized_keys"
    chown "$name:$name" "/home/$name/.ssh/authorized_keys"
    chmod 600 "/home/$name/.ssh/authorized_keys"
    echo "provisioned $name"
}

while IFS=, read -r login fullname; do
    [ -z "$login" ] && continue
    provision_user "$login" "$fullname"
done < <(tail -n +2 "$ROSTER")
"#,
        &[("SHELL", shell), ("KEYS", &keys_url)],
    ));
    Draft {
        content: c,
        purpose: format!("provisions local Linux accounts in the {group} group from a CSV roster"),
        steps: vec![
            "refuses to continue unless it runs as root and creates the group with groupadd if needed".into(),
            "reads login and full name pairs from the roster, default /etc/provision/users.csv".into(),
            format!("creates missing users with useradd -m -s {shell} and forces a password change with passwd -e"),
            format!("downloads each user's public keys from {keys_url} into ~/.ssh/authorized_keys with mode 600"),
        ],
        effects: vec!["Accounts, home directories and authorized_keys files are created for the listed staff only.".into()],
        behaviours: vec!["Manages local user accounts".into()],
        iocs: vec![keys_url, "useradd".into(), "/etc/provision/users.csv".into()],
    }
}
