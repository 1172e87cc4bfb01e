//! The tonic trait of CustomerService: each call is who may make it, its decoded input and
//! the service function (`salesopp_kit::handle`).

use salesopp_kit::handle;
use salesopp_proto::customer::v1 as pb;
use salesopp_proto::customer::v1::customer_service_server::CustomerService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::service;

#[derive(Debug, Clone)]
pub struct Customers {
    pool: PgPool,
}

impl Customers {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl CustomerService for Customers {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        handle::sales(request, async |caller, input| {
            service::create(&self.pool, caller, input).await
        })
        .await
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        handle::sales(request, async |caller, input| {
            service::get(&self.pool, caller, input).await
        })
        .await
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        handle::sales(request, async |caller, input| {
            service::update(&self.pool, caller, input).await
        })
        .await
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::list(&self.pool, caller, input).await
        })
        .await
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        handle::sales(request, async |caller, input| {
            service::delete(&self.pool, caller, input).await
        })
        .await
    }
}
