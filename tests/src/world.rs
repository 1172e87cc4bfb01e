//! The world of one end-to-end test: the suite on a database of its own and a client of each
//! service, with the fixtures the test files share (a customer; an opportunity created, read,
//! changed and updated), so that no file keeps its own copy. A file's own vocabulary sits on
//! a wrapper of its own (declared with [`world!`](crate::world!)) that reaches this one's
//! fields and methods through `Deref`.

use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_proto::gateway::v1::gateway_service_client::GatewayServiceClient;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_proto::statusconfig::v1::status_config_service_client::StatusConfigServiceClient;
use sqlx::PgPool;
use tonic::Status;
use tonic::transport::Channel;

use crate::fixtures::rid;
use crate::{SuiteOptions, TestSuite, authed};

/// A suite and its four clients.
#[derive(Debug)]
pub struct World {
    pub suite: TestSuite,
    pub customers: CustomerServiceClient<Channel>,
    pub opps: OpportunityServiceClient<Channel>,
    pub statuses: StatusConfigServiceClient<Channel>,
    pub gateway: GatewayServiceClient<Channel>,
}

impl World {
    pub async fn new() -> World {
        World::with(SuiteOptions::default()).await
    }

    /// The same, with the suite as `options` say.
    pub async fn with(options: SuiteOptions) -> World {
        World::of(TestSuite::spawn_with(options).await).await
    }

    /// The world of a suite already served (e.g. on a database of a private cluster).
    pub async fn of(suite: TestSuite) -> World {
        World {
            customers: suite.customers().await,
            opps: suite.opportunities().await,
            statuses: suite.statuses().await,
            gateway: suite.gateway().await,
            suite,
        }
    }

    /// A pool on the test's database, for fixtures and for checking what was written.
    pub fn db(&self) -> &PgPool {
        &self.suite.db
    }

    /// Sets the database's test clock: from now on every write of the suite stamps `at`
    /// (`salesopp_now()`, migrations/20261201000006_time_in_status.sql) until the clock is set
    /// again, so a test makes stays of known lengths without sleeping.
    pub async fn set_clock(&self, at: sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>) {
        set_clock(self.db(), at).await;
    }

    /// `customer`, created by `token` (which records its caller).
    pub async fn customer_with(&mut self, token: &str, customer: cpb::Customer) -> cpb::Customer {
        self.customers
            .create_customer(authed(
                token,
                cpb::CreateCustomerRequest {
                    customer: Some(customer),
                    request_id: rid(),
                },
            ))
            .await
            .expect("create customer")
            .into_inner()
    }

    /// A customer named `name`, created by `token`.
    pub async fn customer(&mut self, token: &str, name: &str) -> cpb::Customer {
        self.customer_with(
            token,
            cpb::Customer {
                display_name: name.to_owned(),
                ..Default::default()
            },
        )
        .await
    }

    pub async fn try_create_request(
        &mut self,
        token: &str,
        request: opb::CreateOpportunityRequest,
    ) -> Result<opb::Opportunity, Status> {
        self.opps
            .create_opportunity(authed(token, request))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn try_get(&mut self, token: &str, id: &str) -> Result<opb::Opportunity, Status> {
        self.opps
            .get_opportunity(authed(
                token,
                opb::GetOpportunityRequest { id: id.to_owned() },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn get(&mut self, token: &str, id: &str) -> opb::Opportunity {
        self.try_get(token, id).await.expect("get opportunity")
    }

    pub async fn try_change(
        &mut self,
        token: &str,
        request: opb::ChangeOpportunityStatusRequest,
    ) -> Result<opb::ChangeOpportunityStatusResponse, Status> {
        self.opps
            .change_opportunity_status(authed(token, request))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn try_update_request(
        &mut self,
        token: &str,
        request: opb::UpdateOpportunityRequest,
    ) -> Result<opb::Opportunity, Status> {
        self.opps
            .update_opportunity(authed(token, request))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn try_history(
        &mut self,
        token: &str,
        request: opb::ListStatusHistoryRequest,
    ) -> Result<opb::ListStatusHistoryResponse, Status> {
        self.opps
            .list_status_history(authed(token, request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The whole history of one opportunity, oldest first, in one page.
    pub async fn history(&mut self, token: &str, id: &str) -> Vec<opb::StatusChange> {
        let page = self
            .try_history(
                token,
                opb::ListStatusHistoryRequest {
                    opportunity_id: id.to_owned(),
                    page_size: 500,
                    ..Default::default()
                },
            )
            .await
            .expect("list status history");
        assert!(page.next_page_token.is_empty());
        page.status_changes
    }
}

/// Declares a test file's world: the shared [`World`] (as its field `world`) and the file's
/// own fields, reaching the shared world's fields and methods through `Deref`, so that the
/// file adds its own calls in an `impl` of its own:
///
/// ```ignore
/// salesopp_tests::world! {
///     /// The shared world, and the customer its opportunities are of.
///     struct World {
///         customer: String,
///     }
/// }
/// ```
#[macro_export]
macro_rules! world {
    (
        $(#[$meta:meta])*
        struct $name:ident {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        struct $name {
            world: $crate::World,
            $($(#[$field_meta])* $field: $ty,)*
        }

        impl ::std::ops::Deref for $name {
            type Target = $crate::World;
            fn deref(&self) -> &$crate::World {
                &self.world
            }
        }

        impl ::std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut $crate::World {
                &mut self.world
            }
        }
    };
}

/// Sets the test clock of the database behind `db` ([`World::set_clock`]), for tests that
/// serve it from processes of their own.
pub async fn set_clock(db: &PgPool, at: sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>) {
    let mut tx = db.begin().await.expect("begin");
    sqlx::query("set local salesopp.test_clock = 'on'")
        .execute(&mut *tx)
        .await
        .expect("allow the test clock");
    sqlx::query(
        "insert into salesopp_test_clock (now) values ($1)
         on conflict (singleton) do update set now = excluded.now",
    )
    .bind(at)
    .execute(&mut *tx)
    .await
    .expect("set the test clock");
    tx.commit().await.expect("commit the test clock");
}
