//! The relay's `grpc.health.v1` service, for Kubernetes probes: the overall status ("") is
//! SERVING while the relay reaches its database, whether it publishes or stands by, and
//! NOT_SERVING while it does not and from shutdown on. `salesopp.relay.active` is SERVING
//! only in the replica that holds the lease (the one publishing).

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::RelayStatus;

/// The health name SERVING only in the active relay.
pub const ACTIVE: &str = "salesopp.relay.active";

fn serving(yes: bool) -> ServingStatus {
    if yes {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Serves health on `listener`, following `status`, until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    status: watch::Receiver<RelayStatus>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (reporter, service) = tonic_health::server::health_reporter();
    let initial = *status.borrow();
    report(&reporter, initial).await;
    let follower = tokio::spawn(follow(reporter, status));
    tracing::info!(addr = ?listener.local_addr().ok(), "serving grpc.health.v1");
    let served = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    follower.abort();
    Ok(served?)
}

async fn report(reporter: &HealthReporter, status: RelayStatus) {
    salesopp_kit::metrics::metrics()
        .database_up
        .with_label_values(&[salesopp_kit::metrics::PRIMARY_POOL])
        .set(i64::from(status.database_reachable));
    reporter
        .set_service_status("", serving(status.healthy()))
        .await;
    reporter
        .set_service_status(ACTIVE, serving(status.healthy() && status.active))
        .await;
}

async fn follow(reporter: HealthReporter, mut status: watch::Receiver<RelayStatus>) {
    let mut last = None;
    loop {
        let now = *status.borrow_and_update();
        if last != Some(now) {
            report(&reporter, now).await;
            last = Some(now);
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}
