//! A private Postgres cluster that one test owns: its own data directory, port and server
//! process, so the test may stop, crash and restart its database (or give it TLS, or a hot
//! standby) without touching the shared cluster on 5432.
//!
//! The cluster is made with the machine's own `initdb` and driven with `pg_ctl` (the highest
//! version found under `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`): trust
//! authentication for `127.0.0.1`, `fsync = off` (nothing here survives an OS crash anyway),
//! a free port picked at creation ([`PgCluster::serve_tls`] and [`PgCluster::require_tls`]
//! make it a server that speaks TLS, and only TLS, over TCP). Postgres refuses to run as root, so when the test runs as
//! root every Postgres program runs as the `postgres` OS user, which owns the directory.
//!
//! [`PgCluster::standby`] makes a streaming hot standby of a running cluster
//! (`pg_basebackup -R -X stream`, another directory and port, `hot_standby = on`).
//!
//! Every method blocks on the program it runs, off the async runtime (`spawn_blocking`), and
//! panics with the program's output and the server log's tail when it fails: a test's setup
//! either works or says why. Dropping the cluster stops it (`immediate`) and removes its
//! directory.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sqlx::postgres::PgConnectOptions;

/// How `pg_ctl` stops the server (`pg_ctl stop -m MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Waits for every session to end by itself.
    Smart,
    /// Rolls back open transactions and terminates every session (SQLSTATE 57P01
    /// "terminating connection due to administrator command"), then shuts down cleanly.
    Fast,
    /// Kills the server at once, like a crash: the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            Self::Smart => "smart",
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }
}

/// A Postgres cluster in a temporary directory, on its own port; see the module docs.
pub struct PgCluster {
    ctl: Ctl,
    port: u16,
}

impl fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCluster")
            .field("root", &self.ctl.root)
            .field("port", &self.port)
            .field("bin_dir", &self.ctl.bin_dir)
            .finish()
    }
}

impl PgCluster {
    /// Creates a cluster (initdb and its configuration) without starting it: configure it
    /// further with [`set`](Self::set), [`allow`](Self::allow) or files in
    /// [`data_dir`](Self::data_dir), then [`start`](Self::start) it.
    pub async fn init() -> PgCluster {
        let port = free_port();
        let ctl = tokio::task::spawn_blocking(move || Ctl::init(port))
            .await
            .expect("initdb task");
        PgCluster { ctl, port }
    }

    /// Creates a cluster and starts it.
    pub async fn start_new() -> PgCluster {
        let cluster = Self::init().await;
        cluster.start().await;
        cluster
    }

    /// Creates and starts a cluster that streaming standbys can replicate
    /// ([`standby`](Self::standby)): `wal_level = replica` (15's default, said so that a
    /// changed default cannot break the replicas), WAL senders for them, and a pg_hba line
    /// letting `postgres` replicate over 127.0.0.1 (initdb's own trust lines allow it too;
    /// this one does not depend on them).
    pub async fn start_primary() -> PgCluster {
        let cluster = Self::init().await;
        cluster.set("wal_level", "replica");
        cluster.set("max_wal_senders", "4");
        cluster.allow("host replication postgres 127.0.0.1/32 trust");
        cluster.start().await;
        cluster
    }

    /// A streaming hot standby of this running cluster, started and accepting read-only
    /// connections on a port of its own: `pg_basebackup -D <dir> -R -X stream` (a base
    /// backup, the WAL it needs streamed alongside, `standby.signal` and `primary_conninfo`
    /// written), then `hot_standby = on` and its own port and socket directory. It replays
    /// what the primary writes from then on; dropping it stops it and removes its directory.
    pub async fn standby(&self) -> PgCluster {
        let port = free_port();
        let primary_port = self.port;
        let ctl = tokio::task::spawn_blocking(move || {
            let ctl = Ctl::create();
            let _cleanup = RemoveIfPanicking(ctl.root.clone());
            let mut basebackup = ctl.command("pg_basebackup");
            basebackup
                .args(["-h", "127.0.0.1", "-p", &primary_port.to_string()])
                .args(["-U", "postgres", "-D"])
                .arg(&ctl.data)
                .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"]);
            ctl.run(basebackup, "pg_basebackup");
            // The copied postgresql.conf is the primary's: the lines appended here win.
            ctl.configure(port);
            ctl.append("postgresql.conf", "hot_standby = on");
            ctl
        })
        .await
        .expect("pg_basebackup task");
        let standby = PgCluster { ctl, port };
        standby.start().await;
        standby
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn start(&self) {
        self.pg_ctl(&["start"]).await;
    }

    /// Stops the server (waits until it is down).
    pub async fn stop(&self, mode: StopMode) {
        self.pg_ctl(&["stop", "-m", mode.as_arg()]).await;
    }

    /// Stops the server with `mode` and starts it again on the same port and data, waiting
    /// until it accepts connections (after crash recovery, for [`StopMode::Immediate`]).
    pub async fn restart(&self, mode: StopMode) {
        self.pg_ctl(&["restart", "-m", mode.as_arg()]).await;
    }

    /// Appends `name = 'value'` to `postgresql.conf`; it applies from the next (re)start.
    pub fn set(&self, name: &str, value: &str) {
        let escaped = value.replace('\'', "''");
        self.ctl
            .append("postgresql.conf", &format!("{name} = '{escaped}'"));
    }

    /// Appends `line` to `pg_hba.conf` (e.g. `hostssl all all 127.0.0.1/32 cert`); it applies
    /// from the next (re)start. Rules are matched in order, so a rule meant to replace the
    /// trust rules of [`init`](Self::init) needs those removed from the file first.
    pub fn allow(&self, line: &str) {
        self.ctl.append("pg_hba.conf", line);
    }

    /// Serves TLS from the next (re)start: `certificate` (PEM, the server's certificate and
    /// any intermediates) and its `key` (PEM) go to `server.crt` and `server.key` in the data
    /// directory, owned by the server's OS user and readable by it alone (Postgres refuses a
    /// key others may read), and `ssl = on`. Add [`require_tls`](Self::require_tls) to refuse
    /// connections without it.
    pub fn serve_tls(&self, certificate: &str, key: &str) {
        self.ctl.write("server.crt", certificate);
        self.ctl.write("server.key", key);
        self.set("ssl", "on");
        self.set("ssl_cert_file", "server.crt");
        self.set("ssl_key_file", "server.key");
    }

    /// Replaces `pg_hba.conf` so that TCP connections are trusted only over TLS
    /// (`hostssl all all 127.0.0.1/32 trust`, no `host` line): one without TLS is refused with
    /// "no pg_hba.conf entry ... no encryption". The Unix socket stays trusted. Applies from
    /// the next (re)start.
    pub fn require_tls(&self) {
        self.ctl.write(
            "pg_hba.conf",
            "# salesopp test cluster: TLS or nothing over TCP\n\
             local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n",
        );
    }

    /// The data directory (owned by the OS user the server runs as; see
    /// [`command`](Self::command) to write files there as that user).
    pub fn data_dir(&self) -> &Path {
        &self.ctl.data
    }

    /// The directory of the Postgres programs used (`initdb`, `pg_ctl`, `pg_basebackup`...).
    pub fn bin_dir(&self) -> &Path {
        &self.ctl.bin_dir
    }

    /// The server log: what to read when a test wants to know what the server did.
    pub fn log_file(&self) -> PathBuf {
        self.ctl.log.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: the superuser on database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The connect options of [`url`](Self::url); `.database(name)` for another database.
    pub fn options(&self) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(self.port)
            .username("postgres")
            .database("postgres")
    }

    /// A command for the Postgres program `program` of [`bin_dir`](Self::bin_dir) (e.g.
    /// `pg_basebackup`), run as the OS user the server runs as, in the cluster's directory.
    pub fn command(&self, program: &str) -> Command {
        self.ctl.command(program)
    }

    async fn pg_ctl(&self, args: &[&str]) {
        let ctl = self.ctl.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || ctl.pg_ctl(&args))
            .await
            .expect("pg_ctl task");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Not running (never started, or stopped) is fine: pg_ctl says so and nothing happens.
        let _ = self
            .ctl
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.ctl.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.ctl.root);
    }
}

/// What runs the programs: where they are, where the cluster is, and as whom.
#[derive(Debug, Clone)]
struct Ctl {
    bin_dir: PathBuf,
    /// The temporary directory holding `data/` and `postgres.log` (and the Unix socket).
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// Run the programs as the `postgres` OS user (the test runs as root).
    as_postgres: bool,
}

impl Ctl {
    /// A new temporary directory for a cluster (no `data/` yet), owned by the OS user the
    /// server runs as.
    fn create() -> Ctl {
        let root =
            std::env::temp_dir().join(format!("salesopp-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).expect("create the cluster directory");
        let as_postgres = running_as_root();
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))
                .expect("give the cluster directory to the postgres OS user");
        }
        Ctl {
            bin_dir: bin_dir(),
            data: root.join("data"),
            log: root.join("postgres.log"),
            root,
            as_postgres,
        }
    }

    fn init(port: u16) -> Ctl {
        let ctl = Ctl::create();
        let _cleanup = RemoveIfPanicking(ctl.root.clone());
        let mut initdb = ctl.command("initdb");
        initdb
            .arg("-D")
            .arg(&ctl.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .args(["--locale=C.UTF-8", "--no-sync"]);
        ctl.run(initdb, "initdb");
        // initdb's pg_hba.conf trusts local, 127.0.0.1/32 and ::1 (replication included).
        ctl.configure(port);
        ctl
    }

    /// Where the server listens (127.0.0.1:`port`, its socket in the cluster's directory),
    /// and no fsync.
    fn configure(&self, port: u16) {
        self.append(
            "postgresql.conf",
            &format!(
                "\n# salesopp test cluster\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
                 unix_socket_directories = '{}'\nfsync = off\n",
                self.root.display()
            ),
        );
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let mut command = if self.as_postgres {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(path);
            runuser
        } else {
            Command::new(path)
        };
        command.current_dir(&self.root).stdin(Stdio::null());
        command
    }

    fn pg_ctl(&self, args: &[String]) {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120"])
            .args(args);
        self.run(pg_ctl, &format!("pg_ctl {}", args.join(" ")));
    }

    /// Runs `command` to completion, panicking with its output and the log's tail on failure.
    fn run(&self, mut command: Command, what: &str) {
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
        if !output.status.success() {
            panic!(
                "{what} failed ({}):\n{}{}\n--- {} (tail) ---\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log.display(),
                self.log_tail(),
            );
        }
    }

    fn append(&self, file: &str, text: &str) {
        let path = self.data.join(file);
        let mut opened = OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        writeln!(opened, "{text}").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Writes `file` of the data directory anew, as the server's OS user would: owned by
    /// it, mode 0600.
    fn write(&self, file: &str, text: &str) {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.data.join(file);
        let mut opened = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        opened
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        // An existing file keeps its mode through `open`: set it.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        if self.as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Removes a half-made cluster's directory when its creation panics.
struct RemoveIfPanicking(PathBuf);

impl Drop for RemoveIfPanicking {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A port nobody listens on now (bound, then released for the server to take).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("pick a free port")
        .port()
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self")
        .map(|metadata| metadata.uid() == 0)
        .unwrap_or(false)
}

/// The uid and gid of the `postgres` OS user.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no postgres OS user (id {flag} postgres): {output:?}"))
    };
    (id("-u"), id("-g"))
}

/// The highest Postgres version's `bin` under `/usr/lib/postgresql`, else `pg_config --bindir`.
fn bin_dir() -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        });
    if let Some((_, bin)) = versions.max_by_key(|(version, _)| *version) {
        return bin;
    }
    let output = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("no /usr/lib/postgresql/*/bin/initdb and no pg_config: install postgresql");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}
