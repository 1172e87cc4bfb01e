//! The SQL of the customer directory. Functions run on the executor they are given; the
//! service decides the transaction. Fixed statements are checked at build time (`query!`,
//! `query_as!`; the offline data is in `.sqlx/`). List queries are built with `QueryBuilder`
//! because their shape varies with the filters, so each shape gets its own plan (and its
//! index).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::domain::CustomerFields;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustomerRow {
    pub id: Uuid,
    pub code: Option<String>,
    pub display_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub contact_name: Option<String>,
    pub tax_id: Option<String>,
    pub address: Option<String>,
    pub owner_id: String,
    pub archived: bool,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub created_by: String,
    pub created_by_name: String,
    pub updated_by: String,
    pub updated_by_name: String,
    /// `lower(display_name)` as Postgres folds it: the name order's keyset key.
    pub name_key: String,
}

impl CustomerRow {
    pub fn etag(&self) -> String {
        self.revision.to_string()
    }

    pub fn fields(&self) -> CustomerFields {
        CustomerFields {
            code: self.code.clone(),
            display_name: self.display_name.clone(),
            email: self.email.clone(),
            phone: self.phone.clone(),
            contact_name: self.contact_name.clone(),
            tax_id: self.tax_id.clone(),
            address: self.address.clone(),
        }
    }
}

/// GetCustomer's SELECT, checked by [`get`]; every list reads the same columns
/// ([`select_customer`]).
const GET_SQL: &str = include_str!("../queries/get.sql");

/// The select list and joins of every customer read: GetCustomer's statement up to its
/// `where`, with plain column names for `FromRow`.
static SELECT_CUSTOMER: LazyLock<String> = LazyLock::new(|| {
    let select = GET_SQL.trim_end().strip_suffix("where c.id = $1");
    salesopp_kit::db::plain_column_names(
        select.expect("queries/get.sql ends with `where c.id = $1`"),
    )
});

fn select_customer() -> &'static str {
    &SELECT_CUSTOMER
}

/// The searched text, exactly the expression of `customer_search_trgm_idx` (migrations/),
/// so the trigram index serves the search.
const SEARCH_EXPRESSION: &str = "lower(c.display_name || E'\\n' || coalesce(c.code, '') || E'\\n' \
     || coalesce(c.contact_name, '') || E'\\n' || coalesce(c.email, '') || E'\\n' || coalesce(c.phone, ''))";

#[tracing::instrument(name = "SELECT customers", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "customers"))]
pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<CustomerRow>, sqlx::Error> {
    sqlx::query_file_as!(CustomerRow, "queries/get.sql", id)
        .fetch_optional(db)
        .await
}

/// Locks the customer row for the rest of the transaction (updates, archiving).
pub async fn lock(
    tx: &mut PgConnection,
    id: Uuid,
) -> Result<Option<(i64, bool, String)>, sqlx::Error> {
    let row = sqlx::query!(
        "select revision, archived, owner_id from customers where id = $1 for update",
        id
    )
    .fetch_optional(tx)
    .await?;
    Ok(row.map(|row| (row.revision, row.archived, row.owner_id)))
}

pub async fn insert(
    tx: &mut PgConnection,
    fields: &CustomerFields,
    owner_id: &str,
    actor_id: &str,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar!(
        "insert into customers (code, display_name, email, phone, contact_name, tax_id, address,
                                owner_id, created_by, updated_by)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
         returning id",
        fields.code.as_deref(),
        &fields.display_name,
        fields.email.as_deref(),
        fields.phone.as_deref(),
        fields.contact_name.as_deref(),
        fields.tax_id.as_deref(),
        fields.address.as_deref(),
        owner_id,
        actor_id
    )
    .fetch_one(tx)
    .await
}

/// One customer of a batch to insert (R21), with the id it gets.
pub struct NewCustomer<'a> {
    pub id: Uuid,
    pub fields: &'a CustomerFields,
    pub owner_id: &'a str,
}

/// Inserts a batch of customers in one statement; returns the ids written. A customer whose
/// code is taken (by a committed customer, or by one inserted earlier in the same statement)
/// is not written and its id is missing from the answer: the caller says why.
pub async fn insert_many(
    tx: &mut PgConnection,
    customers: &[NewCustomer<'_>],
    actor_id: &str,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let column = |get: fn(&CustomerFields) -> Option<&str>| -> Vec<Option<String>> {
        customers
            .iter()
            .map(|c| get(c.fields).map(str::to_owned))
            .collect()
    };
    let ids: Vec<Uuid> = customers.iter().map(|c| c.id).collect();
    let names: Vec<String> = customers
        .iter()
        .map(|c| c.fields.display_name.clone())
        .collect();
    let owners: Vec<String> = customers.iter().map(|c| c.owner_id.to_owned()).collect();
    sqlx::query_scalar!(
        r#"insert into customers (id, code, display_name, email, phone, contact_name, tax_id,
                                address, owner_id, created_by, updated_by)
         select item.id, item.code, item.display_name, item.email, item.phone,
                item.contact_name, item.tax_id, item.address, item.owner_id, $10, $10
         from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[])
              as item (id, code, display_name, email, phone, contact_name, tax_id, address,
                       owner_id)
         on conflict (lower(code)) where code is not null do nothing
         returning id"#,
        &ids,
        &column(|f| f.code.as_deref()) as &[Option<String>],
        &names,
        &column(|f| f.email.as_deref()) as &[Option<String>],
        &column(|f| f.phone.as_deref()) as &[Option<String>],
        &column(|f| f.contact_name.as_deref()) as &[Option<String>],
        &column(|f| f.tax_id.as_deref()) as &[Option<String>],
        &column(|f| f.address.as_deref()) as &[Option<String>],
        &owners,
        actor_id,
    )
    .fetch_all(tx)
    .await
}

/// The customers with these ids, in no particular order (a batch's answer, R21).
pub async fn get_many(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<CustomerRow>, sqlx::Error> {
    let mut query = QueryBuilder::new(select_customer());
    query.push("where c.id = any(").push_bind(ids).push(")");
    query.build_query_as().fetch_all(tx).await
}

pub async fn update(
    tx: &mut PgConnection,
    id: Uuid,
    fields: &CustomerFields,
    owner_id: &str,
    actor_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update customers
         set code = $2, display_name = $3, email = $4, phone = $5, contact_name = $6,
             tax_id = $7, address = $8, owner_id = $9, updated_by = $10,
             revision = revision + 1, update_time = salesopp_now()
         where id = $1",
        id,
        fields.code.as_deref(),
        &fields.display_name,
        fields.email.as_deref(),
        fields.phone.as_deref(),
        fields.contact_name.as_deref(),
        fields.tax_id.as_deref(),
        fields.address.as_deref(),
        owner_id,
        actor_id
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Opportunities of the customer still open: they block archiving.
pub async fn open_opportunities(tx: &mut PgConnection, id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from opportunities where customer_id = $1 and state = 'OPEN'"#,
        id
    )
    .fetch_one(tx)
    .await
}

pub async fn archive(tx: &mut PgConnection, id: Uuid, actor_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update customers
         set archived = true, archive_time = salesopp_now(), updated_by = $2,
             revision = revision + 1, update_time = salesopp_now()
         where id = $1",
        id,
        actor_id
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// The order of a customer list, with the keyset position after which a page starts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ListAfter {
    /// `(lower(display_name), id)` of the last row served.
    Name(String, Uuid),
    /// `(update_time, id)` of the last row served, newest first.
    UpdateTime(DateTime<Utc>, Uuid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ListOrder {
    DisplayName,
    UpdateTimeDesc,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ListFilter {
    /// A `LIKE` pattern over the search expression, already lowercased and escaped.
    pub pattern: Option<String>,
    pub owner_ids: Vec<String>,
    pub ids: Vec<Uuid>,
    pub show_archived: bool,
    pub order: ListOrder,
}

/// The list query for `filter` after `after`, `limit` rows; exposed for plan checks.
pub fn list_query(
    filter: &ListFilter,
    after: Option<&ListAfter>,
    limit: i64,
) -> QueryBuilder<Postgres> {
    let order = match filter.order {
        ListOrder::DisplayName => " order by lower(c.display_name), c.id",
        ListOrder::UpdateTimeDesc => " order by c.update_time desc, c.id desc",
    };
    let mut query = QueryBuilder::new("");
    let Some(pattern) = &filter.pattern else {
        query.push(select_customer()).push("where true");
        push_conditions(&mut query, filter, after);
        query.push(order).push(" limit ").push_bind(limit);
        return query;
    };
    // The matches first, through the trigram index, with only what orders them; then the
    // page of them; then the page's rows and names. Left to itself the planner walks the name
    // index and filters, reading most of the table for a term that matches late in name
    // order (Thai names sort after Latin ones); and joining every match before paging would
    // read each matching row twice.
    query
        .push("with matches as materialized (")
        .push("select c.id, c.display_name, c.update_time from customers c where ")
        .push(SEARCH_EXPRESSION)
        .push(" like lower(")
        .push_bind(pattern.clone())
        .push(")");
    push_conditions(&mut query, filter, after);
    query
        .push("), page as (select c.id from matches c")
        .push(order)
        .push(" limit ")
        .push_bind(limit)
        .push(") ")
        .push(select_customer())
        .push("where c.id in (select id from page)")
        .push(order);
    query
}

/// The list's conditions after a `where`, each as ` and ...` over `customers c`.
fn push_conditions(
    query: &mut QueryBuilder<Postgres>,
    filter: &ListFilter,
    after: Option<&ListAfter>,
) {
    if !filter.show_archived {
        query.push(" and not c.archived");
    }
    if !filter.owner_ids.is_empty() {
        query
            .push(" and c.owner_id = any(")
            .push_bind(&filter.owner_ids)
            .push(")");
    }
    match after {
        Some(ListAfter::Name(name, id)) => {
            query
                .push(" and (lower(c.display_name), c.id) > (")
                .push_bind(name)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        Some(ListAfter::UpdateTime(time, id)) => {
            query
                .push(" and (c.update_time, c.id) < (")
                .push_bind(time)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        None => {}
    }
}

#[tracing::instrument(name = "SELECT customers", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "customers"))]
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    filter: &ListFilter,
    after: Option<&ListAfter>,
    limit: i64,
) -> Result<Vec<CustomerRow>, sqlx::Error> {
    let mut query = list_query(filter, after, limit);
    query.build_query_as().fetch_all(db).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_the_columns_of_get_by_their_plain_names() {
        let select = select_customer();
        assert!(select.starts_with("select c.id, c.code,"), "{select}");
        assert!(
            select
                .trim_end()
                .ends_with("join salespeople ub on ub.id = c.updated_by")
        );
        assert!(
            select.contains("lower(c.display_name) as name_key"),
            "{select}"
        );
        assert!(!select.contains('"'), "{select}");
    }
}
