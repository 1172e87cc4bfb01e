//! The one shape of every gRPC handler: who calls (the role proof the call needs, checked
//! once, before anything of the request is looked at), the request decoded into the
//! service's domain input (`TryFrom`, every bad field a violation), the service function's
//! answer. Handlers are then a line each, and a reader finds the rules in the service and
//! domain modules, never in the handler.

use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::identity::{Admin, Principal, Sales};

/// The principal and decoded input of `request`, or the refusal: no principal (the auth
/// layer is missing) or a malformed field. The role is checked by the caller of this, first.
fn decode<Req, In>(request: &Request<Req>) -> Result<(Principal, Result<In, ApiError>), Status>
where
    In: for<'r> TryFrom<&'r Req, Error = ApiError>,
{
    Ok((Principal::of(request)?, In::try_from(request.get_ref())))
}

/// A call any salesperson may make (R12): `call` gets the caller's proof and the input.
pub async fn sales<Req, In, Out, Failure, Call>(
    request: Request<Req>,
    call: Call,
) -> Result<Response<Out>, Status>
where
    In: for<'r> TryFrom<&'r Req, Error = ApiError>,
    Call: for<'p> AsyncFnOnce(Sales<'p>, In) -> Result<Out, Failure>,
    Failure: Into<Status>,
{
    let (principal, input) = decode(&request)?;
    let caller = principal.sales()?;
    Ok(Response::new(
        call(caller, input?).await.map_err(Into::into)?,
    ))
}

/// A configuration call, for `sales_admin` only (R12).
pub async fn admin<Req, In, Out, Failure, Call>(
    request: Request<Req>,
    call: Call,
) -> Result<Response<Out>, Status>
where
    In: for<'r> TryFrom<&'r Req, Error = ApiError>,
    Call: for<'p> AsyncFnOnce(Admin<'p>, In) -> Result<Out, Failure>,
    Failure: Into<Status>,
{
    let (principal, input) = decode(&request)?;
    let caller = principal.admin()?;
    Ok(Response::new(
        call(caller, input?).await.map_err(Into::into)?,
    ))
}
