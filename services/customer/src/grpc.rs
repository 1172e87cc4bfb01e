//! The tonic trait of CustomerService: decode, call the service function, encode.

use salesopp_kit::Principal;
use salesopp_kit::idempotency::{Retry, parse_request_id};
use salesopp_proto::customer::v1 as pb;
use salesopp_proto::customer::v1::customer_service_server::CustomerService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{convert, service};

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
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        Ok(Response::new(
            service::create(&self.pool, caller, request.get_ref()).await?,
        ))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        let id = salesopp_kit::ids::uuid_field("id", &request.get_ref().id, "a customer id")?;
        Ok(Response::new(service::get(&self.pool, caller, id).await?))
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        let body = request.get_ref();
        let (id, etag, patch) = convert::customer_patch(body)?;
        let retry = Retry::new("UpdateCustomer", &body.request_id, body);
        Ok(Response::new(
            service::update(&self.pool, caller, retry, id, etag.as_deref(), patch).await?,
        ))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        Ok(Response::new(
            service::list(&self.pool, caller, request.get_ref()).await?,
        ))
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        let body = request.get_ref();
        let id = salesopp_kit::ids::uuid_field("id", &body.id, "a customer id")?;
        let etag = (!body.etag.is_empty()).then_some(body.etag.as_str());
        parse_request_id(&body.request_id)?;
        let retry = Retry::new("DeleteCustomer", &body.request_id, body);
        Ok(Response::new(
            service::delete(&self.pool, caller, retry, id, etag).await?,
        ))
    }
}
