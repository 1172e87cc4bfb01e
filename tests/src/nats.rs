//! A private NATS server with JetStream that one test owns: its own port and storage
//! directory, so the test may stop and start it again (the shared server on 4222 stays up)
//! and read back what JetStream stored.
//!
//! Runs `nats-server -a 127.0.0.1 -p PORT -js -sd DIR` (`SALESOPP_TEST_NATS_SERVER`, else
//! `nats-server` on the PATH, else `/usr/sbin/nats-server`). Stopping is SIGTERM, a clean
//! shutdown that keeps every acknowledged message; dropping the server kills it and removes
//! its directory.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;

pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("running", &self.child.is_some())
            .finish()
    }
}

fn program() -> PathBuf {
    if let Ok(path) = std::env::var("SALESOPP_TEST_NATS_SERVER") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| "/usr/sbin/nats-server".into())
}

impl NatsServer {
    /// A port and a directory for a server, not started yet (for a relay that must start
    /// while NATS is down).
    pub fn reserve() -> NatsServer {
        let dir = std::env::temp_dir().join(format!("salesopp-nats-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the NATS storage directory");
        NatsServer {
            port: crate::cluster::free_port(),
            dir,
            child: None,
        }
    }

    /// A started server.
    pub async fn start_new() -> NatsServer {
        let mut server = Self::reserve();
        server.start().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    /// Starts the server (again) on its port and directory, and waits until it accepts
    /// connections.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "the NATS server already runs");
        let child = Command::new(program())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.join("jetstream"))
            .arg("-l")
            .arg(self.log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program().display()));
        self.child = Some(child);
        let port = self.port;
        let up = tokio::task::spawn_blocking(move || {
            for _ in 0..300 {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
        .await
        .expect("wait task");
        assert!(
            up,
            "nats-server did not listen on {port}: see {}",
            self.log().display()
        );
    }

    /// Stops the server cleanly (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, "TERM");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("wait task")
            .expect("nats-server exit");
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A JetStream client of this server.
    pub async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to the test's NATS server");
        jetstream::new(client)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `SIG<name>` to a child process.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {}", child.id());
}

/// One message JetStream stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    pub payload: Vec<u8>,
}

impl Stored {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|value| value.as_str().to_owned())
            .unwrap_or_default()
    }

    pub fn msg_id(&self) -> String {
        self.header("Nats-Msg-Id")
    }
}

/// Every message of `stream`, in stream order (empty when the stream does not exist yet).
pub async fn stored_messages(jetstream: &jetstream::Context, stream: &str) -> Vec<Stored> {
    let Ok(mut handle) = jetstream.get_stream(stream).await else {
        return Vec::new();
    };
    let Ok(info) = handle.info().await else {
        return Vec::new();
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    for sequence in first.max(1)..=last {
        if let Ok(message) = handle.get_raw_message(sequence).await {
            out.push(Stored {
                subject: message.subject.to_string(),
                headers: message.headers,
                payload: message.payload.to_vec(),
            });
        }
    }
    out
}
