//! Spreading the gateway's calls over every ready instance of a service.
//!
//! A service's URL names its instances:
//! - `http://host:port` or `dns:///host:port`: every address `host` resolves to, resolved
//!   again every interval. On Kubernetes, a headless Service answers one address per ready
//!   pod, so pods the autoscaler adds get calls within one interval.
//! - `ipv4:10.0.0.1:50051,10.0.0.2:50051` or `ipv6:[::1]:50051,...` (gRPC's naming): a fixed
//!   list.
//!
//! Each address is watched with `grpc.health.v1.Health/Watch` for the service, over the
//! connection its calls use. It takes calls while it reports SERVING (or has no health
//! service at all), and drops out as soon as it reports anything else, its connection fails
//! or it leaves the DNS answer. A pod that drains turns NOT_SERVING first, so it stops
//! getting calls before it stops taking them, well before the endpoints controller and DNS
//! catch up. Calls go round-robin over the instances taking calls; with none, a call fails
//! at once with UNAVAILABLE (which the gateway answers naming the part), never waiting.
//!
//! tonic's own `Channel::balance_channel` was not used: with no endpoint it holds calls until
//! their deadline (forever without one), and it has no health checking.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How often a DNS name is resolved again, unless told otherwise.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a call made just after start-up waits for the first answers of the instances.
const FIRST_ANSWERS: Duration = Duration::from_secs(3);
/// Reconnecting to an instance that went away: from this, doubling up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the instances of a service are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The addresses of `host`, resolved again every interval.
    Dns { host: String, port: u16 },
    /// A fixed list of addresses.
    Fixed(Vec<SocketAddr>),
}

impl Target {
    /// Parses a service URL (see the module's documentation for the forms it takes).
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let bad = |why: &str| anyhow::anyhow!("invalid service URL {url:?}: {why}");
        if let Some(list) = url
            .strip_prefix("ipv4:")
            .or_else(|| url.strip_prefix("ipv6:"))
        {
            let addresses = list
                .split(',')
                .map(|one| {
                    one.trim()
                        .parse::<SocketAddr>()
                        .map_err(|_| bad("each address must be ip:port"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            return Ok(Target::Fixed(addresses));
        }
        let authority = if let Some(rest) = url.strip_prefix("dns:") {
            // dns:///host:port, or dns://resolver/host:port (the resolver is the system's).
            let rest = rest.strip_prefix("//").map_or(rest, |with_authority| {
                with_authority
                    .split_once('/')
                    .map_or(with_authority, |(_, path)| path)
            });
            rest.to_owned()
        } else {
            let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
            if uri.scheme_str() != Some("http") {
                return Err(bad(
                    "use http://host:port, dns:///host:port or ipv4:ip:port,...",
                ));
            }
            let authority = uri.authority().ok_or_else(|| bad("no host"))?;
            format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            )
        };
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port = port.parse().map_err(|_| bad("the port is not a number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Target::Dns {
            host: host.to_owned(),
            port,
        })
    }

    async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Target::Fixed(addresses) => Ok(addresses.clone()),
            Target::Dns { host, port } => {
                let mut addresses: Vec<_> = tokio::net::lookup_host((host.as_str(), *port))
                    .await?
                    .collect();
                addresses.sort();
                addresses.dedup();
                Ok(addresses)
            }
        }
    }
}

/// What a call can be sent to now.
#[derive(Debug, Clone, Default)]
struct Members {
    /// The instances taking calls, in address order.
    ready: Arc<[Channel]>,
    /// Whether every address resolved so far has answered once (or the resolution failed):
    /// until then an empty `ready` means "not known yet", not "none".
    settled: bool,
}

/// The instances of one service, as a tonic transport: each call goes to the next instance
/// taking calls. Cheap to clone; the watching ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Instances {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    service: &'static str,
    members: watch::Receiver<Members>,
    next: AtomicUsize,
    _membership: AbortOnDrop,
}

impl Instances {
    /// Starts watching the instances of `service` (its fully qualified gRPC name) at
    /// `target`; `label` names it in the `salesopp_gateway_instances_ready` metric. Must be
    /// called within a Tokio runtime.
    pub fn watch(
        service: &'static str,
        label: &'static str,
        target: Target,
        resolve_interval: Duration,
    ) -> Instances {
        let (publish, members) = watch::channel(Members::default());
        let membership = tokio::spawn(membership(
            Watched {
                service,
                label,
                target,
                resolve_interval,
            },
            publish,
        ));
        Instances {
            shared: Arc::new(Shared {
                service,
                members,
                next: AtomicUsize::new(0),
                _membership: AbortOnDrop(membership),
            }),
        }
    }

    /// How many instances take calls now.
    pub fn ready(&self) -> usize {
        self.shared.members.borrow().ready.len()
    }

    /// The instance the next call goes to.
    async fn pick(&self) -> Result<Channel, Status> {
        let mut members = self.shared.members.clone();
        let known = tokio::time::timeout(
            FIRST_ANSWERS,
            members.wait_for(|m| m.settled || !m.ready.is_empty()),
        )
        .await;
        drop(known);
        let ready = members.borrow().ready.clone();
        if ready.is_empty() {
            return Err(Status::unavailable(format!(
                "no instance of {} is ready",
                self.shared.service
            )));
        }
        let turn = self.shared.next.fetch_add(1, Ordering::Relaxed);
        Ok(ready[turn % ready.len()].clone())
    }
}

impl tower::Service<http::Request<Body>> for Instances {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is the chosen instance's, awaited in `call`: the choice is per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let instances = self.clone();
        Box::pin(async move {
            let mut channel = instances.pick().await?;
            std::future::poll_fn(|cx| tower::Service::poll_ready(&mut channel, cx)).await?;
            Ok(tower::Service::call(&mut channel, request).await?)
        })
    }
}

/// What the membership task watches.
struct Watched {
    service: &'static str,
    label: &'static str,
    target: Target,
    resolve_interval: Duration,
}

/// One instance's news: which watcher (its generation), and its channel while it takes
/// calls.
struct Report {
    address: SocketAddr,
    generation: u64,
    ready: Option<Channel>,
}

/// Resolves the target every interval, keeps one watcher per address, and publishes the
/// instances taking calls, until every [`Instances`] is dropped.
async fn membership(watched: Watched, publish: watch::Sender<Members>) {
    let (report, mut reports) = mpsc::unbounded_channel::<Report>();
    let mut watchers: HashMap<SocketAddr, (u64, Option<bool>, AbortOnDrop)> = HashMap::new();
    let mut ready: BTreeMap<SocketAddr, Channel> = BTreeMap::new();
    let mut generation = 0u64;
    let mut resolved = false;
    let mut tick = tokio::time::interval(watched.resolve_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let gauge = salesopp_kit::metrics::metrics()
        .gateway_instances
        .with_label_values(&[watched.label]);
    loop {
        tokio::select! {
            _ = tick.tick() => match watched.target.resolve().await {
                Ok(addresses) => {
                    resolved = true;
                    watchers.retain(|address, _| addresses.contains(address));
                    ready.retain(|address, _| addresses.contains(address));
                    for address in addresses {
                        watchers.entry(address).or_insert_with(|| {
                            generation += 1;
                            let task = tokio::spawn(watch_instance(
                                address,
                                watched.service,
                                generation,
                                report.clone(),
                            ));
                            (generation, None, AbortOnDrop(task))
                        });
                    }
                }
                Err(error) => {
                    // Keep what was known: a DNS hiccup must not empty a healthy service.
                    resolved = true;
                    tracing::warn!(service = watched.service, ?watched.target, %error,
                        "resolving the service's instances failed");
                }
            },
            Some(news) = reports.recv() => {
                let Some((generation, answered, _)) = watchers.get_mut(&news.address) else {
                    continue;
                };
                if *generation != news.generation {
                    continue;
                }
                *answered = Some(news.ready.is_some());
                match news.ready {
                    Some(channel) => ready.insert(news.address, channel),
                    None => ready.remove(&news.address),
                };
            }
        }
        let settled = resolved && watchers.values().all(|(_, answered, _)| answered.is_some());
        gauge.set(ready.len() as i64);
        let members = Members {
            ready: ready.values().cloned().collect(),
            settled,
        };
        if publish.send(members).is_err() {
            return;
        }
    }
}

/// Watches one address: connects, follows its health for `service`, and reports whether it
/// takes calls; reconnects with backoff while it is away.
async fn watch_instance(
    address: SocketAddr,
    service: &'static str,
    generation: u64,
    reports: mpsc::UnboundedSender<Report>,
) {
    let send = |ready: Option<Channel>| {
        reports.send(Report {
            address,
            generation,
            ready,
        })
    };
    let endpoint = match Endpoint::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10)),
        Err(_) => return,
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        match endpoint.connect().await {
            Err(error) => {
                tracing::debug!(%address, service, %error, "instance unreachable");
                if send(None).is_err() {
                    return;
                }
            }
            Ok(channel) => {
                let request = HealthCheckRequest {
                    service: service.to_owned(),
                };
                match HealthClient::new(channel.clone()).watch(request).await {
                    Ok(stream) => {
                        backoff = MIN_BACKOFF;
                        let mut stream = stream.into_inner();
                        while let Ok(Some(answer)) = stream.message().await {
                            let serving = answer.status == ServingStatus::Serving as i32;
                            if send(serving.then(|| channel.clone())).is_err() {
                                return;
                            }
                        }
                        // The watch ended: the instance is going away (or its connection
                        // broke). It takes no calls until it answers again.
                        if send(None).is_err() {
                            return;
                        }
                    }
                    Err(status) if status.code() == tonic::Code::Unimplemented => {
                        // No health service: taken as ready while it is in the resolution;
                        // its channel reconnects by itself.
                        if send(Some(channel)).is_err() {
                            return;
                        }
                        std::future::pending::<()>().await;
                    }
                    Err(status) => {
                        tracing::debug!(%address, service, %status, "instance health unknown");
                        if send(None).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A task that ends with its owner.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("http://salesopp-opportunity-headless:50051").unwrap(),
            Target::Dns {
                host: "salesopp-opportunity-headless".to_owned(),
                port: 50051
            }
        );
        assert_eq!(
            Target::parse("dns:///localhost:7000").unwrap(),
            Target::Dns {
                host: "localhost".to_owned(),
                port: 7000
            }
        );
        assert_eq!(
            Target::parse("dns://8.8.8.8/example.com:7000").unwrap(),
            Target::Dns {
                host: "example.com".to_owned(),
                port: 7000
            }
        );
        assert_eq!(
            Target::parse("http://[::1]:7000").unwrap(),
            Target::Dns {
                host: "::1".to_owned(),
                port: 7000
            }
        );
        assert_eq!(
            Target::parse("ipv4:127.0.0.1:1,127.0.0.2:2").unwrap(),
            Target::Fixed(vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.2:2".parse().unwrap()
            ])
        );
        for bad in [
            "https://x:1",
            "ipv4:127.0.0.1",
            "dns:///nohost",
            "not a url",
            "dns:///:7",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
