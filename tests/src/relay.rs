//! A TCP relay between a service and Postgres that a test can cut and restore, to show what
//! the suite does while its database is unreachable, without stopping the shared Postgres.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Bumped on every cut: live connections watching it close.
    generation: watch::Sender<u64>,
    /// How many connections were refused while cut.
    refused: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays `127.0.0.1:<port 0>` to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let open = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let (refused, _) = watch::channel(0u64);
        let task = {
            let open = open.clone();
            let generation = generation.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        drop(inbound);
                        refused.send_modify(|n| *n += 1);
                        continue;
                    }
                    let mut cut = generation.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {},
                            _ = cut.changed() => {},
                        }
                    });
                }
            })
        };
        Relay {
            addr,
            open,
            generation,
            refused,
            task,
        }
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// How many connections it has refused while cut, so far.
    pub fn refused(&self) -> u64 {
        *self.refused.borrow()
    }

    /// Waits until it has refused `count` connections in all (a generous bound guards
    /// against a hang).
    pub async fn until_refused(&self, count: u64) {
        let mut refused = self.refused.subscribe();
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            refused.wait_for(|n| *n >= count),
        )
        .await
        .unwrap_or_else(|_| panic!("the relay never refused {count} connections"))
        .expect("the relay runs");
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
