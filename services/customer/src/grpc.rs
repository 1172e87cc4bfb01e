//! The tonic trait of CustomerService: each call is who may make it, its decoded input and
//! the service function (`salesopp_kit::handle`), given the pool it reads from: the
//! primary for the writes and GetCustomer, the read pool for the list (`Pools`).

use salesopp_kit::db::Pools;
use salesopp_kit::handle;
use salesopp_proto::customer::v1 as pb;
use salesopp_proto::customer::v1::customer_service_server::CustomerService;
use tonic::{Request, Response, Status};

use crate::service;

#[derive(Debug, Clone)]
pub struct Customers {
    pools: Pools,
}

impl Customers {
    pub fn new(pools: Pools) -> Self {
        Self { pools }
    }
}

#[tonic::async_trait]
impl CustomerService for Customers {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        handle::sales(request, async |caller, input| {
            service::create(self.pools.primary(), caller, input).await
        })
        .await
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        handle::sales(request, async |caller, input| {
            // On the primary: a client reads what it has just written, and the etag it
            // gets is the one its next update is checked against.
            service::get(self.pools.primary(), caller, input).await
        })
        .await
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        handle::sales(request, async |caller, input| {
            service::update(self.pools.primary(), caller, input).await
        })
        .await
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::list(self.pools.read(), caller, input).await
        })
        .await
    }

    async fn batch_create_customers(
        &self,
        request: Request<pb::BatchCreateCustomersRequest>,
    ) -> Result<Response<pb::BatchCreateCustomersResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::batch_create(self.pools.primary(), caller, input).await
        })
        .await
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        handle::sales(request, async |caller, input| {
            service::delete(self.pools.primary(), caller, input).await
        })
        .await
    }
}
