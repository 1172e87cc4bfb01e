//! Every call the suite declares survives whatever a client can send it (issue 10): for each
//! method of each `salesopp.*` service in the embedded descriptor set, requests are built at
//! random from the method's input type, the way a reflection client builds them (random
//! presence of each field; hostile strings, extreme numbers, unknown enum numbers, bad money,
//! dates, timestamps, durations and field masks, huge lists and maps, ids and tokens of rows
//! that exist), some of them valid but for a field or two so that hostile values get past
//! the validation too, plus raw bytes that are not a valid encoding at all (invalid UTF-8,
//! truncated varints, lengths past the end, bad wire types, an oversized message) and damaged
//! encodings of generated requests. They are sent over real gRPC, eight at a time, each on a
//! connection of its own (so a call that breaks its connection is blamed, not its
//! neighbours), by the admin, a manager, a rep, a caller with no role and a caller with no
//! token. The watch is called too, and its first message read within half a second. It
//! proves that:
//!
//! - no answer is `INTERNAL`, `UNKNOWN` or `DATA_LOSS` (a client's input is never the
//!   server's fault), no declared method is `UNIMPLEMENTED`, no answer is `UNAVAILABLE` or
//!   `CANCELLED` while the database is up, and no call ends in a transport error (a reset
//!   stream is what a panicking handler looks like; so is an answer whose headers are too
//!   large for the client, which is sent again with a 64 MiB limit to show what it was);
//! - every successful answer decodes as the method's output type;
//! - nothing in the process panicked (the suite runs in this process; a panic hook counts);
//! - afterwards the server still answers health checks and a normal `GetOpportunity` on a
//!   fresh connection, and the status invariants (R3, R4) still hold.
//!
//! A call that takes longer than 10 s is listed, not failed. Every offender is collected
//! (method, case, caller, shape of the request, code, message), and the test fails at the end
//! listing them all, grouped by kind of problem, so one run shows every problem.
//!
//! Deterministic: each case is generated from (seed, method, case number). The seed is
//! printed; `FUZZ_SEED` replays a run, `FUZZ_CASES` sets the cases per unary method (default
//! 150; the watch gets a third), `FUZZ_METHOD` keeps only methods whose full name contains
//! it, `FUZZ_CASE` only that case number (its whole request is printed), `FUZZ_IN_FLIGHT`
//! sets the concurrency and `FUZZ_TRACE` prints every call. Ids of fixture rows differ
//! between runs, and earlier cases change the data later ones see, so a replay is exact in
//! shape, not in every id.
//!
//! `cargo test -p salesopp-tests --test fuzz -- --nocapture`

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt as _;
use prost::Message as _;
use prost::bytes::{Buf as _, BufMut as _, Bytes};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    MethodDescriptor, Value,
};
use salesopp_proto::common::v1::{Date, Money};
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::gateway::v1 as gpb;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_tests::fixtures::{PRESENTED, SHIPPED_STATUSES};
use salesopp_tests::{TestSuite, admin_token, authed, manager_token, rep_token, token};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

/// A well-formed id that no row has.
const UNKNOWN: &str = "6f1c1a8e-0000-4000-8000-00000000dead";

/// Calls in flight at once (`FUZZ_IN_FLIGHT` overrides).
const IN_FLIGHT: usize = 8;
/// Longest a unary call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a watch waits for its first message (it sends none while nothing is visible).
const FIRST_EVENT_WAIT: Duration = Duration::from_millis(500);
/// The server's default limit on a received message (tonic's 4 MiB).
const SERVER_MESSAGE_LIMIT: usize = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// A tiny deterministic generator (splitmix64)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator of one case: independent of the order cases run in.
    fn for_case(seed: u64, method: &str, case: usize) -> Rng {
        // FNV-1a of the method's full name: stable across runs and platforms.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in method.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = Rng::new(seed ^ hash ^ (case as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `lo..=hi`.
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------
// The callers
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Caller {
    name: &'static str,
    token: Option<String>,
}

fn callers() -> Vec<Caller> {
    vec![
        Caller {
            name: "admin",
            token: Some(admin_token()),
        },
        Caller {
            name: "manager",
            token: Some(manager_token()),
        },
        Caller {
            name: "rep",
            token: Some(rep_token()),
        },
        Caller {
            name: "no-role",
            token: Some(token("norole-1", "Nobody Noroles", "north", &[])),
        },
        Caller {
            name: "no-token",
            token: None,
        },
    ]
}

/// Which caller makes a case: the admin most often (it gets past authorization to the
/// validation and the database), every other kind regularly.
fn caller_index(rng: &mut Rng) -> usize {
    *rng.pick(&[0, 0, 0, 1, 1, 2, 2, 3, 4])
}

// ---------------------------------------------------------------------------------------
// The raw codec: bytes in, bytes out, so invalid encodings can be sent too
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures: rows created first, through the typed clients, so ids hit real rows
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Fixtures {
    /// Ids in many spellings: real rows, shipped statuses, unknown, malformed.
    ids: Vec<String>,
    /// Principal ids (`sub` claims) and near misses: owners and salespeople are these.
    subs: Vec<String>,
    etags: Vec<String>,
    /// Page tokens the lists really returned.
    page_tokens: Vec<String>,
    /// Event cursors, real and crafted.
    cursors: Vec<String>,
    teams: Vec<String>,
    /// Ids of real rows, by kind, for requests that are valid but for one field.
    customers: Vec<String>,
    opportunities: Vec<String>,
    statuses: Vec<String>,
    /// The opportunity the final liveness check reads.
    opportunity_id: String,
}

fn event_cursor(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

async fn create_fixtures(suite: &TestSuite) -> Fixtures {
    let admin = admin_token();
    let rep = rep_token();
    let manager = manager_token();
    let mut customers = suite.customers().await;
    let mut opportunities = suite.opportunities().await;
    let mut statuses = suite.statuses().await;
    let mut gateway = suite.gateway().await;

    let mut customer_ids = Vec::new();
    let mut etags = Vec::new();
    for (caller, name, code) in [
        (&admin, "บริษัท ฟัซซ์ เทสต์ จำกัด", "FUZZ-1"),
        (&rep, "Fuzz Test Trading", "FUZZ-2"),
    ] {
        let customer = customers
            .create_customer(authed(
                caller,
                cpb::CreateCustomerRequest {
                    customer: Some(cpb::Customer {
                        code: code.to_owned(),
                        display_name: name.to_owned(),
                        email: "buyer@example.co.th".to_owned(),
                        contact_name: "คุณสมศรี".to_owned(),
                        ..Default::default()
                    }),
                    request_id: Uuid::new_v4().to_string(),
                },
            ))
            .await
            .expect("seed a customer")
            .into_inner();
        customer_ids.push(customer.id);
        etags.push(customer.etag);
    }

    let status = statuses
        .create_status(authed(
            &admin,
            spb::CreateStatusRequest {
                status: Some(spb::OpportunityStatus {
                    display_name: "Negotiating".to_owned(),
                    localized_names: BTreeMap::from([
                        ("th".to_owned(), "เจรจาต่อรอง".to_owned()),
                        ("en".to_owned(), "Negotiating".to_owned()),
                    ]),
                    probability: 60,
                    kind: spb::StatusKind::Open as i32,
                    ..Default::default()
                }),
                request_id: Uuid::new_v4().to_string(),
            },
        ))
        .await
        .expect("seed a status")
        .into_inner();
    etags.push(status.etag.clone());

    let mut opportunity_ids = Vec::new();
    for (caller, customer_id, title, units) in [
        (&rep, &customer_ids[0], "ระบบ ERP สำหรับโรงงาน", 1_250_000),
        (&rep, &customer_ids[1], "Fuzz licence renewal", 99_000),
        (&manager, &customer_ids[0], "Team deal", 10),
    ] {
        let opportunity = opportunities
            .create_opportunity(authed(
                caller,
                opb::CreateOpportunityRequest {
                    opportunity: Some(opb::Opportunity {
                        customer_id: customer_id.clone(),
                        title: title.to_owned(),
                        amount: Some(Money {
                            currency_code: "THB".to_owned(),
                            units,
                            nanos: 500_000_000,
                        }),
                        expected_close_date: Some(Date {
                            year: 2026,
                            month: 9,
                            day: 30,
                        }),
                        ..Default::default()
                    }),
                    request_id: Uuid::new_v4().to_string(),
                    note: "seeded for the fuzz test".to_owned(),
                },
            ))
            .await
            .expect("seed an opportunity")
            .into_inner();
        opportunity_ids.push(opportunity.id);
    }
    let changed = opportunities
        .change_opportunity_status(authed(
            &rep,
            opb::ChangeOpportunityStatusRequest {
                opportunity_id: opportunity_ids[0].clone(),
                status_id: PRESENTED.to_owned(),
                note: "นำเสนอแล้ว".to_owned(),
                request_id: Uuid::new_v4().to_string(),
                ..Default::default()
            },
        ))
        .await
        .expect("seed a status change")
        .into_inner();
    let opportunity = changed.opportunity.expect("the changed opportunity");
    etags.push(opportunity.etag);

    // Real page tokens of every list, and etags of the shipped statuses.
    let mut page_tokens = Vec::new();
    let listed = statuses
        .list_statuses(authed(
            &admin,
            spb::ListStatusesRequest {
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .expect("list statuses")
        .into_inner();
    page_tokens.push(listed.next_page_token);
    let all = statuses
        .list_statuses(authed(&admin, spb::ListStatusesRequest::default()))
        .await
        .expect("list statuses")
        .into_inner();
    etags.extend(all.statuses.into_iter().map(|s| s.etag));
    page_tokens.push(
        customers
            .list_customers(authed(
                &admin,
                cpb::ListCustomersRequest {
                    page_size: 1,
                    ..Default::default()
                },
            ))
            .await
            .expect("list customers")
            .into_inner()
            .next_page_token,
    );
    page_tokens.push(
        opportunities
            .list_opportunities(authed(
                &admin,
                opb::ListOpportunitiesRequest {
                    page_size: 1,
                    ..Default::default()
                },
            ))
            .await
            .expect("list opportunities")
            .into_inner()
            .next_page_token,
    );
    page_tokens.push(
        opportunities
            .list_status_history(authed(
                &admin,
                opb::ListStatusHistoryRequest {
                    opportunity_id: opportunity_ids[0].clone(),
                    page_size: 1,
                    ..Default::default()
                },
            ))
            .await
            .expect("list status history")
            .into_inner()
            .next_page_token,
    );
    page_tokens.push(
        opportunities
            .list_salespeople(authed(
                &admin,
                opb::ListSalespeopleRequest {
                    page_size: 1,
                    ..Default::default()
                },
            ))
            .await
            .expect("list salespeople")
            .into_inner()
            .next_page_token,
    );
    page_tokens.push(
        gateway
            .get_opportunity_with_history(authed(
                &admin,
                gpb::GetOpportunityWithHistoryRequest {
                    opportunity_id: opportunity_ids[0].clone(),
                    history_page_size: 1,
                },
            ))
            .await
            .expect("opportunity with history")
            .into_inner()
            .history_next_page_token,
    );
    page_tokens.push(
        gateway
            .get_customer_overview(authed(
                &admin,
                gpb::GetCustomerOverviewRequest {
                    customer_id: customer_ids[0].clone(),
                    page_size: 1,
                    ..Default::default()
                },
            ))
            .await
            .expect("customer overview")
            .into_inner()
            .next_page_token,
    );
    page_tokens.retain(|t| !t.is_empty());
    assert!(
        page_tokens.len() >= 4,
        "the lists return page tokens: {page_tokens:?}"
    );

    let mut ids: Vec<String> = Vec::new();
    ids.extend(customer_ids.iter().cloned());
    ids.extend(opportunity_ids.iter().cloned());
    ids.push(status.id.clone());
    ids.extend(SHIPPED_STATUSES.iter().map(|s| (*s).to_owned()));
    ids.push(UNKNOWN.to_owned());
    let real = opportunity_ids[0].clone();
    ids.extend([
        Uuid::nil().to_string(),
        "ffffffff-ffff-ffff-ffff-ffffffffffff".to_owned(),
        real.to_uppercase(),
        format!("{{{real}}}"),
        real.replace('-', ""),
        format!("urn:uuid:{real}"),
        format!(" {real} "),
        format!("{real}\0"),
        real[..35].to_owned(),
        format!("{real}0"),
        "00000000-0000-4000-8000-00000000000".to_owned(),
        "00000000-0000-4000-8000-000000000008".to_owned(),
        "0000000g-0000-4000-8000-000000000001".to_owned(),
        "rep-a1".to_owned(),
    ]);

    let subs = [
        "rep-a1",
        "mgr-a",
        "admin-1",
        "norole-1",
        "rep-b1",
        "nobody-at-all",
        "REP-A1",
        "rep-a1 ",
        "",
        "rep-a1\0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();

    let cursors = [
        event_cursor("ev1:1"),
        event_cursor("ev1:2"),
        event_cursor("ev1:0"),
        event_cursor("ev1:9223372036854775807"),
        event_cursor("ev1:9223372036854775808"),
        event_cursor("ev1:-1"),
        event_cursor("ev1:"),
        event_cursor("ev1:1\0"),
        event_cursor("ev2:1"),
        event_cursor("ev1:ก"),
        "ev1:1".to_owned(),
        "!!!!".to_owned(),
    ]
    .to_vec();

    Fixtures {
        ids,
        subs,
        etags,
        page_tokens,
        cursors,
        teams: ["north", "hq", "south", "", "NORTH", "north\0"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        statuses: SHIPPED_STATUSES
            .iter()
            .map(|s| (*s).to_owned())
            .chain([status.id])
            .collect(),
        customers: customer_ids,
        opportunities: opportunity_ids,
        opportunity_id: real,
    }
}

// ---------------------------------------------------------------------------------------
// Random requests from the descriptors
// ---------------------------------------------------------------------------------------

/// Builds one random request: `presence` is how likely each field is to be set. A `sane`
/// request is a valid one but for a few fields (each value is hostile with a small chance),
/// so that hostile values reach the code behind the validation too.
struct Gen<'a> {
    rng: Rng,
    fx: &'a Fixtures,
    presence: u64,
    sane: bool,
    /// In a sane request, how likely each value is to be hostile anyway (percent).
    hostile: u64,
    /// Fixed request ids, so that some cases replay another's id (AIP-155).
    request_ids: [&'static str; 3],
}

const THAI: &[&str] = &[
    "สนใจ",
    "ปิดการขายสำเร็จ",
    "บริษัท ตัวอย่าง จำกัด (มหาชน)",
    "พิจารณาและเปรียบเทียบ",
    "กรุงเทพมหานคร ๑๒๓๔",
    "เ",
    "ก\u{0E33}\u{0E33}\u{0E33}",
];
const CONTROL: &[&str] = &[
    "\0",
    "a\0b",
    "\0\0\0",
    "\u{1}\u{2}\u{7f}",
    "\u{1b}[31mred\u{1b}[0m",
    "\r\n\t",
    "line\nbreak",
    "\u{85}\u{2028}\u{2029}",
    "\u{8}\u{c}\u{b}",
];
const COMBINING: &[&str] = &[
    "\u{0301}",
    "\u{0E31}",
    "\u{0E48}\u{0E49}\u{0E4A}",
    "\u{0300}\u{0301}\u{0302}\u{0303}\u{0304}",
    "e\u{0301}",
    "\u{200D}",
];
const RTL: &[&str] = &[
    "\u{202E}abc",
    "שלום",
    "مرحبا بالعالم",
    "\u{200F}x\u{200E}",
    "abc\u{202B}def\u{202C}",
];
const EMOJI: &[&str] = &[
    "😀",
    "👨\u{200D}👩\u{200D}👧\u{200D}👦",
    "🏳\u{FE0F}\u{200D}🌈",
    "🇹🇭",
    "💰💰💰",
    "\u{1F9D1}\u{1F3FD}\u{200D}\u{1F4BB}",
];
const LIKE_META: &[&str] = &[
    "%", "_", "\\", "%_\\", "a%", "\\%", "%%%%", "_%", "\\\\", "[a-z]", "*", "?", "^$", ".*",
];
const SQLISH: &[&str] = &[
    "' or 1=1 --",
    "'); drop table customers; --",
    "$1",
    "::text",
    "\"",
    "E'\\x00'",
    "' union select null --",
    "1; select pg_sleep(5)",
    "/*",
    "';",
    "\\x00",
    "null",
    "NULL",
];
const INVISIBLE: &[&str] = &[
    " ",
    "   ",
    "\u{3000}",
    "\u{200B}",
    "\u{FEFF}",
    "\u{FEFF}abc",
    "\u{00A0}",
    "\t",
    "\u{FFFD}",
    "\u{FFFF}",
    "\u{10FFFF}",
    "\u{E000}",
];
const NUMERIC: &[&str] = &[
    "-1",
    "0",
    "9223372036854775808",
    "1e309",
    "NaN",
    "Infinity",
    "0x10",
    "１２３",
];
const WORDS: &[&str] = &[
    "Acme",
    "acme",
    "ACME Trading",
    "Somchai",
    "north",
    "Interested",
    "Negotiating",
    "THB",
    "buyer@example.co.th",
    "+66 81 234 5678",
    "FUZZ-1",
];
const CURRENCIES: &[&str] = &[
    "THB", "USD", "EUR", "JPY", "thb", "", "XXX", "XXXX", "TH", "฿", "\0\0\0", "US$", "123",
];
const ORDER_BY: &[&str] = &[
    "display_name",
    "display_name desc",
    "create_time desc",
    "update_time",
    "title asc, amount desc",
    "expected_close_date",
    "amount",
    "code",
    "nope",
    "display_name sideways",
    "create_time desc desc",
    ",",
    "display_name; drop table customers",
    "DISPLAY_NAME",
    " ",
];
/// Fields a well-behaved client does not put in an update mask.
const OUTPUT_ONLY: &[&str] = &[
    "id",
    "etag",
    "create_time",
    "update_time",
    "created_by",
    "updated_by",
    "archived",
    "is_default",
    "status_name",
    "state",
    "close_time",
    "status_change_time",
];

/// A Thai tax id with a correct check digit (the 13th).
fn thai_tax_id(rng: &mut Rng) -> String {
    let digits: Vec<u32> = (0..12).map(|_| rng.below(10) as u32).collect();
    let sum: u32 = digits
        .iter()
        .enumerate()
        .map(|(i, d)| d * (13 - i as u32))
        .sum();
    let check = (11 - sum % 11) % 10;
    digits
        .iter()
        .chain([&check])
        .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
        .collect()
}

const EMAILS: &[&str] = &[
    "a@b.c",
    "@",
    "a@",
    "@b",
    "a b@c.d",
    "สมชาย@ตัวอย่าง.ไทย",
    "x@example.com\0",
];

impl<'a> Gen<'a> {
    fn new(rng: Rng, fx: &'a Fixtures) -> Gen<'a> {
        let mut rng = rng;
        let sane = rng.chance(40);
        let presence = if sane {
            95
        } else {
            *rng.pick(&[10, 35, 60, 90])
        };
        let hostile = *rng.pick(&[0, 3, 6]);
        Gen {
            rng,
            fx,
            presence,
            sane,
            hostile,
            request_ids: [
                "5b0e6a5c-1111-4000-8000-000000000001",
                "5b0e6a5c-1111-4000-8000-000000000002",
                "not-a-uuid-request-id",
            ],
        }
    }

    fn message(&mut self, desc: &MessageDescriptor, depth: usize, small: bool) -> DynamicMessage {
        match desc.full_name() {
            "google.protobuf.Timestamp" => return self.timestamp(desc),
            "google.protobuf.Duration" => return self.duration(desc),
            "salesopp.common.v1.Money" if self.rng.chance(if self.sane { 90 } else { 35 }) => {
                return self.valid_money(desc);
            }
            "salesopp.common.v1.Date" if self.rng.chance(if self.sane { 90 } else { 35 }) => {
                return self.valid_date(desc);
            }
            _ => {}
        }
        let mut message = DynamicMessage::new(desc.clone());
        for field in desc.fields() {
            if !self.rng.chance(self.presence) {
                continue;
            }
            let value = self.field(&field, desc, depth, small);
            message.set_field(&field, value);
        }
        message
    }

    fn field(
        &mut self,
        field: &FieldDescriptor,
        owner: &MessageDescriptor,
        depth: usize,
        small: bool,
    ) -> Value {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("a map field's kind is its entry message")
            };
            let key_field = entry.map_entry_key_field();
            let value_field = entry.map_entry_value_field();
            if self.sane && !self.rng.chance(self.hostile) {
                return self.sane_map(&value_field, owner, depth);
            }
            let count = self.count(small);
            let mut map = HashMap::new();
            for _ in 0..count {
                let key = match self.single(&key_field, owner, depth, true) {
                    Value::String(s) => MapKey::String(self.map_key(s)),
                    Value::I32(n) => MapKey::I32(n),
                    Value::I64(n) => MapKey::I64(n),
                    Value::U32(n) => MapKey::U32(n),
                    Value::U64(n) => MapKey::U64(n),
                    Value::Bool(b) => MapKey::Bool(b),
                    other => unreachable!("not a map key: {other:?}"),
                };
                let small = small || count > 20;
                let value = self.single(&value_field, owner, depth, small);
                map.insert(key, value);
            }
            Value::Map(map)
        } else if field.is_list() {
            let count = if self.sane && !self.rng.chance(self.hostile) {
                self.rng.between(0, 3)
            } else {
                self.count(small)
            };
            let small = small || count > 20;
            Value::List(
                (0..count)
                    .map(|_| self.single(field, owner, depth, small))
                    .collect(),
            )
        } else {
            self.single(field, owner, depth, small)
        }
    }

    /// How many elements a list or map gets: mostly few, sometimes thousands.
    fn count(&mut self, small: bool) -> usize {
        match self.rng.below(100) {
            0..=34 => 0,
            35..=74 => self.rng.between(1, 3),
            75..=92 => self.rng.between(4, 50),
            _ if small => self.rng.between(51, 200),
            _ => self.rng.between(1000, 3000),
        }
    }

    fn map_key(&mut self, generated: String) -> String {
        if self.rng.chance(60) {
            (*self.rng.pick(&[
                "th",
                "en",
                "",
                "TH",
                "EN",
                "en-US",
                "th-TH",
                "zh-Hant-TW",
                "x-klingon",
                "\0",
                "th\0",
                "🇹🇭",
                "ไทย",
                "  ",
            ]))
            .to_owned()
        } else {
            generated
        }
    }

    fn single(
        &mut self,
        field: &FieldDescriptor,
        owner: &MessageDescriptor,
        depth: usize,
        small: bool,
    ) -> Value {
        if self.sane && !self.rng.chance(self.hostile) {
            return self.sane_single(field, owner, depth);
        }
        let name = field.name();
        match field.kind() {
            Kind::String => Value::String(self.string(name, small)),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(self.int32(name)),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(self.int64(name)),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(self.int32(name) as u32),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(self.int64(name) as u64),
            Kind::Float => Value::F32(*self.rng.pick(&[0.0, -1.0, f32::NAN, f32::INFINITY])),
            Kind::Double => Value::F64(*self.rng.pick(&[0.0, -1.0, f64::NAN, f64::MAX])),
            Kind::Bool => Value::Bool(self.rng.chance(50)),
            Kind::Bytes => {
                let len = self.rng.below(64);
                Value::Bytes(Bytes::from(
                    (0..len).map(|_| self.rng.next() as u8).collect::<Vec<u8>>(),
                ))
            }
            Kind::Enum(e) => {
                if self.rng.chance(65) {
                    let values: Vec<i32> = e.values().map(|v| v.number()).collect();
                    Value::EnumNumber(*self.rng.pick(&values))
                } else {
                    let max = e.values().map(|v| v.number()).max().unwrap_or(0);
                    Value::EnumNumber(*self.rng.pick(&[-1, max + 1, 99, 1000, i32::MAX, i32::MIN]))
                }
            }
            Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask" => {
                Value::Message(self.field_mask(&m, owner, small))
            }
            Kind::Message(m) if depth > 6 => Value::Message(DynamicMessage::new(m)),
            Kind::Message(m) => Value::Message(self.message(&m, depth + 1, small)),
        }
    }

    /// A valid value for `field` of `owner`, as a well-behaved client would send.
    fn sane_single(
        &mut self,
        field: &FieldDescriptor,
        owner: &MessageDescriptor,
        depth: usize,
    ) -> Value {
        let name = field.name();
        match field.kind() {
            Kind::String => Value::String(self.sane_string(name, owner)),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(match name {
                "page_size" | "history_page_size" | "opportunities_per_stage" => {
                    self.rng.between(1, 20) as i32
                }
                "probability" => self.rng.between(1, 99) as i32,
                "position" => self.rng.between(1, 8) as i32,
                "year" => 2026,
                "month" => self.rng.between(1, 12) as i32,
                "day" => self.rng.between(1, 28) as i32,
                _ => self.rng.between(0, 5) as i32,
            }),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(match name {
                "units" => self.rng.between(0, 1_000_000) as i64,
                _ => self.rng.between(0, 100) as i64,
            }),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(self.rng.between(0, 5) as u32),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(self.rng.between(0, 5) as u64),
            Kind::Float => Value::F32(1.0),
            Kind::Double => Value::F64(1.0),
            Kind::Bool => Value::Bool(self.rng.chance(50)),
            Kind::Bytes => Value::Bytes(Bytes::from_static(b"ok")),
            Kind::Enum(e) => {
                let values: Vec<i32> = e.values().map(|v| v.number()).filter(|n| *n != 0).collect();
                Value::EnumNumber(if values.is_empty() {
                    0
                } else {
                    *self.rng.pick(&values)
                })
            }
            Kind::Message(m) => match m.full_name() {
                "google.protobuf.FieldMask" => Value::Message(self.sane_mask(&m, owner)),
                "google.protobuf.Timestamp" => {
                    let mut message = DynamicMessage::new(m);
                    let seconds = 1_780_000_000 + self.rng.between(0, 86_400 * 365) as i64;
                    message.set_field_by_name("seconds", Value::I64(seconds));
                    Value::Message(message)
                }
                "google.protobuf.Duration" => {
                    let mut message = DynamicMessage::new(m);
                    message.set_field_by_name("seconds", Value::I64(3600));
                    Value::Message(message)
                }
                _ if depth > 6 => Value::Message(DynamicMessage::new(m)),
                _ => Value::Message(self.message(&m, depth + 1, true)),
            },
        }
    }

    fn sane_string(&mut self, name: &str, owner: &MessageDescriptor) -> String {
        let fx = self.fx;
        let rng = &mut self.rng;
        let owner_name = owner.name().to_lowercase();
        let ids_of = |what: &str| -> &[String] {
            if what.contains("customer") {
                &fx.customers
            } else if what.contains("status") {
                &fx.statuses
            } else {
                &fx.opportunities
            }
        };
        match name {
            "request_id" => Uuid::from_u64_pair(rng.next(), rng.next()).to_string(),
            "etag" => {
                if rng.chance(50) {
                    String::new()
                } else {
                    rng.pick(&fx.etags).clone()
                }
            }
            "page_token" | "after_cursor" | "order_by" | "query" if rng.chance(80) => String::new(),
            "currency_code" => (*rng.pick(&["THB", "USD"])).to_owned(),
            "team" => "north".to_owned(),
            "email" => "buyer@example.co.th".to_owned(),
            "phone" => "+66 81 234 5678".to_owned(),
            "code" => format!("FZ-{}", rng.below(100_000)),
            "tax_id" => thai_tax_id(rng),
            "id" | "ids" => rng.pick(ids_of(&owner_name)).clone(),
            _ if name.contains("owner") || name.contains("salesperson") => {
                (*rng.pick(&["rep-a1", "mgr-a", "admin-1"])).to_owned()
            }
            _ if name.ends_with("_id") || name.ends_with("_ids") => rng.pick(ids_of(name)).clone(),
            _ => {
                if rng.chance(50) {
                    (*rng.pick(THAI)).to_owned()
                } else {
                    (*rng.pick(WORDS)).to_owned()
                }
            }
        }
    }

    fn sane_map(
        &mut self,
        value_field: &FieldDescriptor,
        owner: &MessageDescriptor,
        depth: usize,
    ) -> Value {
        let mut map = HashMap::new();
        for key in ["th", "en"] {
            if self.rng.chance(80) {
                let value = self.single(value_field, owner, depth, true);
                map.insert(MapKey::String(key.to_owned()), value);
            }
        }
        Value::Map(map)
    }

    fn sane_mask(&mut self, desc: &MessageDescriptor, owner: &MessageDescriptor) -> DynamicMessage {
        let fields: Vec<String> = owner
            .fields()
            .find_map(|f| match f.kind() {
                Kind::Message(m) if !m.full_name().starts_with("google.protobuf.") => Some(m),
                _ => None,
            })
            .map(|m| {
                m.fields()
                    .map(|f| f.name().to_owned())
                    .filter(|name| !OUTPUT_ONLY.contains(&name.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let mut paths: Vec<String> = (0..self.rng.between(1, 3))
            .filter(|_| !fields.is_empty())
            .map(|_| self.rng.pick(&fields).clone())
            .collect();
        paths.sort_unstable();
        paths.dedup();
        let paths = paths.into_iter().map(Value::String).collect();
        let mut message = DynamicMessage::new(desc.clone());
        message.set_field_by_name("paths", Value::List(paths));
        message
    }

    fn string(&mut self, name: &str, small: bool) -> String {
        let fx = self.fx;
        let rng = &mut self.rng;
        let owner_like = name.contains("owner") || name.contains("salesperson");
        if name == "request_id" {
            match rng.below(10) {
                0..=4 => return Uuid::from_u64_pair(rng.next(), rng.next()).to_string(),
                5..=6 => return (*rng.pick(&self.request_ids)).to_owned(),
                _ => {}
            }
        } else if owner_like || (name == "ids" && rng.chance(30)) {
            if rng.chance(70) {
                return rng.pick(&fx.subs).clone();
            }
        } else if name == "id" || name.ends_with("_id") || name.ends_with("_ids") || name == "ids" {
            if rng.chance(70) {
                return rng.pick(&fx.ids).clone();
            }
        } else if name == "etag" {
            if rng.chance(60) {
                let etag = rng.pick(&fx.etags).clone();
                return if rng.chance(20) {
                    format!("{etag}x")
                } else {
                    etag
                };
            }
        } else if name.ends_with("page_token") {
            if rng.chance(65) {
                return self.page_token();
            }
        } else if name == "after_cursor" {
            if rng.chance(70) {
                return rng.pick(&fx.cursors).clone();
            }
        } else if name == "currency_code" {
            if rng.chance(60) {
                return (*rng.pick(CURRENCIES)).to_owned();
            }
        } else if name == "order_by" {
            if rng.chance(60) {
                return (*rng.pick(ORDER_BY)).to_owned();
            }
        } else if name == "team" {
            if rng.chance(50) {
                return rng.pick(&fx.teams).clone();
            }
        } else if name == "email" && rng.chance(40) {
            return (*rng.pick(EMAILS)).to_owned();
        }
        self.any_string(small, 0)
    }

    /// A string of any kind at all.
    fn any_string(&mut self, small: bool, nesting: usize) -> String {
        let rng = &mut self.rng;
        match rng.below(100) {
            0..=9 => String::new(),
            10..=17 => rng.pick(&self.fx.ids).clone(),
            18..=25 => (*rng.pick(THAI)).to_owned(),
            26..=29 if !small => {
                let len = rng.between(10_000, 100_000);
                let c = *rng.pick(&['a', 'ก', '😀', '\0', '%', '\u{0301}', ' ']);
                std::iter::repeat_n(c, len).collect()
            }
            30..=37 => (*rng.pick(CONTROL)).to_owned(),
            38..=42 => (*rng.pick(COMBINING)).to_owned(),
            43..=47 => (*rng.pick(RTL)).to_owned(),
            48..=52 => (*rng.pick(EMOJI)).to_owned(),
            53..=59 => (*rng.pick(LIKE_META)).to_owned(),
            60..=66 => (*rng.pick(SQLISH)).to_owned(),
            67..=72 => {
                let len = rng.between(1, 40);
                (0..len)
                    .map(|_| char::from(b' ' + rng.below(95) as u8))
                    .collect()
            }
            73..=77 => {
                let len = rng.between(1, 20);
                (0..len)
                    .map(|_| {
                        loop {
                            let candidate = (rng.next() % 0x11_0000) as u32;
                            if let Some(c) = char::from_u32(candidate) {
                                break c;
                            }
                        }
                    })
                    .collect()
            }
            78..=82 => (*rng.pick(INVISIBLE)).to_owned(),
            83..=85 => (*rng.pick(NUMERIC)).to_owned(),
            86..=91 => (*rng.pick(WORDS)).to_owned(),
            92..=95 if !small => {
                // Lengths either side of the usual limits.
                let len = *rng.pick(&[
                    63, 64, 65, 100, 101, 200, 255, 256, 257, 500, 501, 1000, 1001, 2000, 2001,
                    4096, 5000, 10_000,
                ]);
                let c = *rng.pick(&['x', 'ก', '😀']);
                std::iter::repeat_n(c, len).collect()
            }
            _ if nesting < 2 => {
                let a = self.any_string(true, nesting + 1);
                let b = self.any_string(true, nesting + 1);
                format!("{a}{b}")
            }
            _ => (*rng.pick(WORDS)).to_owned(),
        }
    }

    /// A page token: a real one, a real one tampered with, or a forged one.
    fn page_token(&mut self) -> String {
        let rng = &mut self.rng;
        let real = rng.pick(&self.fx.page_tokens).clone();
        match rng.below(10) {
            0..=3 => real,
            4 => format!("{real}A"),
            5 => real[..real.len() / 2].to_owned(),
            6 => URL_SAFE_NO_PAD.encode(rng.pick(&[
                "{}",
                "null",
                "[]",
                "{\"f\":1}",
                "{\"f\":\"\",\"k\":null}",
                "not json",
                "\0",
            ])),
            _ => {
                // The real fingerprint with a forged key: gets past the fingerprint check
                // whenever the request's filters match the listing that made the token.
                let bytes = URL_SAFE_NO_PAD.decode(&real).unwrap_or_default();
                let mut json: serde_json::Value =
                    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                let weird = Self::weird_json(rng);
                match json.get_mut("k") {
                    Some(serde_json::Value::Array(items)) if !items.is_empty() => {
                        let i = rng.below(items.len());
                        items[i] = weird;
                    }
                    Some(k) => *k = weird,
                    None => {}
                }
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json).unwrap_or_default())
            }
        }
    }

    fn weird_json(rng: &mut Rng) -> serde_json::Value {
        use serde_json::json;
        match rng.below(16) {
            0 => json!(""),
            1 => json!("\u{0}"),
            2 => json!(-1),
            3 => json!(1e308),
            4 => json!(i64::MAX),
            5 => json!(i64::MIN),
            6 => json!(u64::MAX),
            7 => json!("not-a-uuid"),
            8 => json!(UNKNOWN),
            9 => json!(null),
            10 => json!({}),
            11 => json!([]),
            12 => json!("x".repeat(10_000)),
            13 => json!("9999-12-31T23:59:59Z"),
            14 => json!("+275760-09-13T00:00:00Z"),
            _ => json!([1, "a", null]),
        }
    }

    fn int32(&mut self, name: &str) -> i32 {
        let rng = &mut self.rng;
        let special: &[i32] = match name {
            "page_size" | "history_page_size" | "opportunities_per_stage" => {
                &[-1, 0, 1, 2, 10, 100, 1000, 1001, 10_000, i32::MAX, i32::MIN]
            }
            "probability" => &[-1, 0, 1, 50, 60, 99, 100, 101, i32::MIN, i32::MAX],
            "position" => &[-1, 0, 1, 7, 8, 9, 100, i32::MAX, i32::MIN],
            "nanos" => &[
                0,
                1,
                -1,
                500_000_000,
                999_999_999,
                1_000_000_000,
                -999_999_999,
                -1_000_000_000,
                i32::MAX,
                i32::MIN,
            ],
            "year" => &[
                0,
                1,
                1969,
                1970,
                2000,
                2024,
                2026,
                9999,
                10_000,
                -1,
                i32::MAX,
                i32::MIN,
            ],
            "month" => &[0, 1, 2, 12, 13, -1, i32::MAX, i32::MIN],
            "day" => &[0, 1, 28, 29, 30, 31, 32, -1, i32::MAX, i32::MIN],
            _ => &[],
        };
        if !special.is_empty() && rng.chance(70) {
            return *rng.pick(special);
        }
        if rng.chance(80) {
            *rng.pick(&[
                0,
                1,
                -1,
                2,
                i32::MIN,
                i32::MAX,
                i32::MIN + 1,
                i32::MAX - 1,
                255,
                256,
                65_535,
                65_536,
            ])
        } else {
            rng.next() as i32
        }
    }

    fn int64(&mut self, name: &str) -> i64 {
        let rng = &mut self.rng;
        if name == "units" && rng.chance(60) {
            return *rng.pick(&[
                0,
                1,
                -1,
                1_000_000,
                999_999_999_999,
                1_000_000_000_000_000,
                922_337_203_685_477,
                9_223_372_036_854_775,
                100_000_000_000_000_000,
                i64::MAX,
                i64::MIN,
                i64::MAX / 100,
            ]);
        }
        if rng.chance(80) {
            *rng.pick(&[
                0,
                1,
                -1,
                i64::MIN,
                i64::MAX,
                i64::from(i32::MAX) + 1,
                i64::from(i32::MIN) - 1,
                1 << 53,
                (1 << 53) + 1,
            ])
        } else {
            rng.next() as i64
        }
    }

    fn valid_money(&mut self, desc: &MessageDescriptor) -> DynamicMessage {
        let currency = (*self.rng.pick(&["THB", "USD", "THB"])).to_owned();
        let units = *self.rng.pick(&[0, 1, 5_000, 1_250_000]);
        let nanos = *self.rng.pick(&[0, 500_000_000, 999_999_999]);
        let mut message = DynamicMessage::new(desc.clone());
        message.set_field_by_name("currency_code", Value::String(currency));
        message.set_field_by_name("units", Value::I64(units));
        message.set_field_by_name("nanos", Value::I32(nanos));
        message
    }

    fn valid_date(&mut self, desc: &MessageDescriptor) -> DynamicMessage {
        let (year, month, day) = *self.rng.pick(&[
            (2026, 6, 30),
            (2024, 2, 29),
            (2025, 12, 31),
            (1, 1, 1),
            (9999, 12, 31),
        ]);
        let mut message = DynamicMessage::new(desc.clone());
        message.set_field_by_name("year", Value::I32(year));
        message.set_field_by_name("month", Value::I32(month));
        message.set_field_by_name("day", Value::I32(day));
        message
    }

    fn timestamp(&mut self, desc: &MessageDescriptor) -> DynamicMessage {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(1_780_000_000);
        let rng = &mut self.rng;
        let seconds = if rng.chance(85) {
            *rng.pick(&[
                0,
                -1,
                now,
                now + 86_400 * 365,
                now - 86_400 * 365 * 30,
                -62_135_596_800,
                -62_135_596_801,
                253_402_300_799,
                253_402_300_800,
                100_000_000_000,
                -100_000_000_000,
                i64::MIN,
                i64::MAX,
            ])
        } else {
            rng.next() as i64
        };
        let nanos = *rng.pick(&[0, 0, 1, 999_999_999, 1_000_000_000, -1, i32::MIN, i32::MAX]);
        let mut message = DynamicMessage::new(desc.clone());
        if rng.chance(90) {
            message.set_field_by_name("seconds", Value::I64(seconds));
        }
        if rng.chance(50) {
            message.set_field_by_name("nanos", Value::I32(nanos));
        }
        message
    }

    fn duration(&mut self, desc: &MessageDescriptor) -> DynamicMessage {
        let rng = &mut self.rng;
        let seconds = *rng.pick(&[
            0,
            1,
            -1,
            86_400,
            315_576_000_000,
            315_576_000_001,
            -315_576_000_001,
            i64::MIN,
            i64::MAX,
        ]);
        let nanos = *rng.pick(&[0, 999_999_999, -999_999_999, 1_000_000_000, -1, i32::MAX]);
        let mut message = DynamicMessage::new(desc.clone());
        message.set_field_by_name("seconds", Value::I64(seconds));
        message.set_field_by_name("nanos", Value::I32(nanos));
        message
    }

    /// A field mask whose paths are mostly fields of the resource the request carries.
    fn field_mask(
        &mut self,
        desc: &MessageDescriptor,
        owner: &MessageDescriptor,
        small: bool,
    ) -> DynamicMessage {
        let resource = owner.fields().find_map(|f| match f.kind() {
            Kind::Message(m) if !m.full_name().starts_with("google.protobuf.") && !f.is_list() => {
                Some((f.name().to_owned(), m))
            }
            _ => None,
        });
        let (prefix, fields): (String, Vec<(String, String)>) = match &resource {
            Some((prefix, m)) => (
                prefix.clone(),
                m.fields()
                    .map(|f| (f.name().to_owned(), f.json_name().to_owned()))
                    .collect(),
            ),
            None => (String::new(), Vec::new()),
        };
        let count = match self.rng.below(100) {
            0..=9 => 0,
            10..=79 => self.rng.between(1, 4),
            80..=95 => self.rng.between(5, 60),
            _ if small => 100,
            _ => self.rng.between(1000, 3000),
        };
        let mut paths = Vec::with_capacity(count);
        for _ in 0..count {
            let rng = &mut self.rng;
            let path = match rng.below(20) {
                0..=10 if !fields.is_empty() => rng.pick(&fields).0.clone(),
                11 if !fields.is_empty() => rng.pick(&fields).1.clone(),
                12 if !fields.is_empty() => format!("{prefix}.{}", rng.pick(&fields).0),
                13 if !fields.is_empty() => rng.pick(&fields).0.to_uppercase(),
                14 => "*".to_owned(),
                15 => (*rng.pick(&[
                    "amount.units",
                    "amount.currency_code",
                    "amount.nanos",
                    "expected_close_date.year",
                    "localized_names.th",
                    "localized_names",
                    "create_time.seconds",
                    "a.b.c.d",
                    ".",
                    "..",
                    "display_name,title",
                ]))
                .to_owned(),
                16 => (*rng.pick(&["", "nope", "id", "etag", "create_time", "update_time"]))
                    .to_owned(),
                _ => self.any_string(true, 0),
            };
            paths.push(Value::String(path));
        }
        let mut message = DynamicMessage::new(desc.clone());
        message.set_field_by_name("paths", Value::List(paths));
        message
    }
}

// ---------------------------------------------------------------------------------------
// Raw bytes that are not a valid encoding of the input type
// ---------------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn put_len(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn is_varint_kind(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Bool
            | Kind::Enum(_)
    )
}

/// The raw cases of one input type, each with the shape it shows.
fn raw_cases(input: &MessageDescriptor) -> Vec<(String, Vec<u8>)> {
    let mut cases = Vec::new();
    let fields: Vec<FieldDescriptor> = input.fields().collect();
    let strings: Vec<&FieldDescriptor> = fields
        .iter()
        .filter(|f| matches!(f.kind(), Kind::String) && !f.is_map())
        .collect();
    for field in &strings {
        for (what, bad) in [
            ("invalid UTF-8 (ff fe)", &[0xff_u8, 0xfe, b'a'][..]),
            ("UTF-8 surrogate (ed a0 80)", &[0xed, 0xa0, 0x80][..]),
            ("overlong NUL (c0 80)", &[b'x', 0xc0, 0x80][..]),
            ("truncated multi-byte (e0 b8)", &[0xe0, 0xb8][..]),
        ] {
            let mut bytes = Vec::new();
            put_len(&mut bytes, field.number(), bad);
            cases.push((format!("raw: {what} in {}", field.name()), bytes));
        }
    }
    // Invalid UTF-8 one level down: each string field of each message field.
    for field in &fields {
        let Kind::Message(m) = field.kind() else {
            continue;
        };
        if field.is_map() {
            let mut entry = Vec::new();
            put_len(&mut entry, 1, &[0xff, 0xfe]);
            put_len(&mut entry, 2, b"x");
            let mut bytes = Vec::new();
            put_len(&mut bytes, field.number(), &entry);
            cases.push((
                format!("raw: invalid UTF-8 in a key of {}", field.name()),
                bytes,
            ));
            continue;
        }
        for inner in m.fields() {
            if matches!(inner.kind(), Kind::String) && !inner.is_map() {
                let mut nested = Vec::new();
                put_len(&mut nested, inner.number(), &[b'o', b'k', 0xff]);
                let mut bytes = Vec::new();
                put_len(&mut bytes, field.number(), &nested);
                cases.push((
                    format!("raw: invalid UTF-8 in {}.{}", field.name(), inner.name()),
                    bytes,
                ));
            }
            if inner.is_map() {
                // A map inside the resource (localized_names): invalid UTF-8 in a value.
                let mut entry = Vec::new();
                put_len(&mut entry, 1, b"th");
                put_len(&mut entry, 2, &[0xc3, 0x28]);
                let mut nested = Vec::new();
                put_len(&mut nested, inner.number(), &entry);
                let mut bytes = Vec::new();
                put_len(&mut bytes, field.number(), &nested);
                cases.push((
                    format!(
                        "raw: invalid UTF-8 in a value of {}.{}",
                        field.name(),
                        inner.name()
                    ),
                    bytes,
                ));
            }
        }
        // A nested message whose length runs past its parent's end.
        let mut bytes = Vec::new();
        put_tag(&mut bytes, field.number(), 2);
        put_varint(&mut bytes, 4);
        bytes.extend_from_slice(&[0x0a, 0x7f, b'a', b'b']);
        cases.push((
            format!("raw: nested length past the end in {}", field.name()),
            bytes,
        ));
    }
    if let Some(field) = fields.iter().find(|f| is_varint_kind(&f.kind())) {
        let n = field.number();
        let mut truncated = Vec::new();
        put_tag(&mut truncated, n, 0);
        truncated.extend_from_slice(&[0xff, 0xff]);
        cases.push((
            format!("raw: truncated varint in {}", field.name()),
            truncated,
        ));
        let mut overlong = Vec::new();
        put_tag(&mut overlong, n, 0);
        overlong.extend_from_slice(&[0xff; 10]);
        overlong.push(0x01);
        cases.push((format!("raw: 11-byte varint in {}", field.name()), overlong));
        let mut wrong = Vec::new();
        put_len(&mut wrong, n, b"not a number");
        cases.push((
            format!("raw: length-delimited wire type for {}", field.name()),
            wrong,
        ));
        if field.is_list() {
            let mut packed = Vec::new();
            put_len(&mut packed, n, &[0x01, 0x02, 0xff]);
            cases.push((
                format!("raw: packed {} with a truncated element", field.name()),
                packed,
            ));
        }
    }
    if let Some(field) = fields
        .iter()
        .find(|f| matches!(f.kind(), Kind::String | Kind::Message(_)))
    {
        let n = field.number();
        let mut past_end = Vec::new();
        put_tag(&mut past_end, n, 2);
        put_varint(&mut past_end, 1000);
        past_end.extend_from_slice(b"abc");
        cases.push((
            format!("raw: length past the end in {}", field.name()),
            past_end,
        ));
        let mut huge = Vec::new();
        put_tag(&mut huge, n, 2);
        put_varint(&mut huge, u64::MAX >> 1);
        cases.push((format!("raw: length 2^63-1 in {}", field.name()), huge));
        let mut as_varint = Vec::new();
        put_tag(&mut as_varint, n, 0);
        put_varint(&mut as_varint, 5);
        cases.push((
            format!("raw: varint wire type for {}", field.name()),
            as_varint,
        ));
        let mut as_fixed = Vec::new();
        put_tag(&mut as_fixed, n, 5);
        as_fixed.extend_from_slice(&[1, 2, 3, 4]);
        cases.push((
            format!("raw: fixed32 wire type for {}", field.name()),
            as_fixed,
        ));
        let mut oversized = Vec::with_capacity(SERVER_MESSAGE_LIMIT + 16);
        put_tag(&mut oversized, n, 2);
        put_varint(&mut oversized, SERVER_MESSAGE_LIMIT as u64);
        oversized.resize(oversized.len() + SERVER_MESSAGE_LIMIT, b'a');
        cases.push((
            format!("raw: oversized message (4 MiB of {})", field.name()),
            oversized,
        ));
    }
    cases.push(("raw: a lone continuation byte (80)".to_owned(), vec![0x80]));
    cases.push(("raw: field number 0".to_owned(), vec![0x00, 0x01]));
    cases.push(("raw: wire type 6".to_owned(), vec![0x0e, 0x01]));
    cases.push(("raw: wire type 7".to_owned(), vec![0x0f]));
    cases.push(("raw: end group without start".to_owned(), vec![0x0c]));
    let mut open_group = Vec::new();
    put_tag(&mut open_group, 1003, 3);
    put_tag(&mut open_group, 1, 0);
    put_varint(&mut open_group, 1);
    cases.push(("raw: unterminated group".to_owned(), open_group));
    let mut field_max = Vec::new();
    put_varint(&mut field_max, u64::from(u32::MAX) << 3);
    put_varint(&mut field_max, 1);
    cases.push(("raw: field number 2^32-1".to_owned(), field_max));
    // Unknown fields of every wire type: a valid encoding, the server ignores them.
    let mut unknown = Vec::new();
    put_tag(&mut unknown, 999, 0);
    put_varint(&mut unknown, u64::MAX);
    put_tag(&mut unknown, 1000, 1);
    unknown.extend_from_slice(&[0; 8]);
    put_len(&mut unknown, 1001, &[0xff, 0xfe]);
    put_tag(&mut unknown, 1002, 5);
    unknown.extend_from_slice(&[0; 4]);
    put_tag(&mut unknown, 1003, 3);
    put_tag(&mut unknown, 1, 0);
    put_varint(&mut unknown, 7);
    put_tag(&mut unknown, 1003, 4);
    put_tag(&mut unknown, (1 << 29) - 1, 0);
    put_varint(&mut unknown, 1);
    cases.push(("raw: unknown fields of every wire type".to_owned(), unknown));
    cases
}

/// Damages a valid encoding: truncates it, flips a byte, or splices garbage in.
fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> (String, Vec<u8>) {
    if bytes.is_empty() {
        return ("garbage".to_owned(), vec![0xff, 0xff, 0xff]);
    }
    match rng.below(4) {
        0 => {
            let at = rng.below(bytes.len());
            bytes.truncate(at);
            (format!("truncated at byte {at}"), bytes)
        }
        1 => {
            let at = rng.below(bytes.len());
            bytes[at] ^= 1 << rng.below(8);
            (format!("bit flipped at byte {at}"), bytes)
        }
        2 => {
            let at = rng.below(bytes.len());
            bytes[at] = 0xff;
            (format!("0xff at byte {at}"), bytes)
        }
        _ => {
            let at = rng.below(bytes.len());
            let len = rng.between(1, 16);
            let garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            bytes.splice(at..at, garbage);
            (format!("{len} random bytes spliced in at {at}"), bytes)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Showing a request briefly
// ---------------------------------------------------------------------------------------

fn short_string(s: &str) -> String {
    let chars = s.chars().count();
    if chars <= 40 {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(12).collect();
        format!("{head:?}…({chars} chars)")
    }
}

fn show_value(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => out.push_str(&short_string(s)),
        Value::Message(m) => show_message(m, out),
        Value::List(items) => {
            if items.len() > 6 {
                // The first item, and the first items with a control character in them.
                let _ = write!(out, "[{} items: ", items.len());
                show_value(&items[0], out);
                let odd = items.iter().enumerate().skip(1).filter(
                    |(_, item)| matches!(item, Value::String(s) if s.chars().any(char::is_control)),
                );
                for (i, item) in odd.take(2) {
                    let _ = write!(out, ", …, [{i}] ");
                    show_value(item, out);
                }
                out.push_str(", …]");
            } else {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    show_value(item, out);
                }
                out.push(']');
            }
        }
        Value::Map(map) => {
            if map.len() > 4 {
                let _ = write!(out, "{{{} entries}}", map.len());
            } else {
                out.push('{');
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    match k {
                        MapKey::String(s) => out.push_str(&short_string(s)),
                        other => {
                            let _ = write!(out, "{other:?}");
                        }
                    }
                    out.push_str(": ");
                    show_value(v, out);
                }
                out.push('}');
            }
        }
        Value::EnumNumber(n) => {
            let _ = write!(out, "enum {n}");
        }
        other => {
            let _ = write!(out, "{other:?}");
        }
    }
}

fn show_message(message: &DynamicMessage, out: &mut String) {
    out.push('{');
    for (i, (field, value)) in message.fields().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(field.name());
        out.push_str(": ");
        show_value(value, out);
    }
    out.push('}');
}

fn shape(message: &DynamicMessage, full: bool) -> String {
    let mut out = String::new();
    show_message(message, &mut out);
    if !full && out.chars().count() > 400 {
        out = out.chars().take(400).collect::<String>() + "…";
    }
    out
}

// ---------------------------------------------------------------------------------------
// Running the cases
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Method {
    /// `/package.Service/Method`
    path: String,
    full_name: String,
    descriptor: MethodDescriptor,
    streaming: bool,
}

#[derive(Debug)]
struct Case {
    method: usize,
    number: usize,
    caller: usize,
    body: Vec<u8>,
    shape: String,
}

#[derive(Debug, Clone)]
struct Offender {
    method: String,
    case: usize,
    caller: &'static str,
    shape: String,
    /// What went wrong: a code name, "transport error", "undecodable response".
    code: String,
    message: String,
}

/// What one case ended with.
#[derive(Debug)]
enum Outcome {
    Ok,
    Code(Code, String),
    /// The call took longer than [`CALL_TIMEOUT`] (not a failure; listed).
    Hung,
    Offence {
        code: String,
        message: String,
    },
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::Ok => "OK".to_owned(),
            Outcome::Code(code, message) => format!("{code:?}: {message:?}"),
            Outcome::Hung => format!("no answer within {CALL_TIMEOUT:?}"),
            Outcome::Offence { code, message } => format!("OFFENCE {code}: {message:?}"),
        }
    }
}

fn judge(status: &Status) -> Outcome {
    if let Some(source) = std::error::Error::source(status) {
        return Outcome::Offence {
            code: format!("transport error ({:?})", status.code()),
            message: format!("{}: {source:?}", status.message()),
        };
    }
    match status.code() {
        Code::Internal
        | Code::Unknown
        | Code::DataLoss
        | Code::Unimplemented
        | Code::Unavailable
        | Code::Cancelled => Outcome::Offence {
            code: format!("{:?}", status.code()),
            message: status.message().to_owned(),
        },
        code => Outcome::Code(code, status.message().chars().take(300).collect()),
    }
}

fn check_response(method: &Method, bytes: &[u8]) -> Outcome {
    match DynamicMessage::decode(method.descriptor.output(), bytes) {
        Ok(_) => Outcome::Ok,
        Err(error) => Outcome::Offence {
            code: "undecodable response".to_owned(),
            message: error.to_string(),
        },
    }
}

/// How one call ended, before judging.
enum Answer {
    /// A response message (or, for a watch, none within [`FIRST_EVENT_WAIT`]).
    Message(Option<Vec<u8>>),
    Status(Status),
    /// The connection could not be made ready.
    NotReady(String),
    TimedOut,
}

/// One call on a connection of its own: a call that breaks its connection shows up as
/// itself, not as the calls that happened to share it. `header_limit` raises the client's
/// limit on the size of the response's headers (hyper's default is 16 KiB).
async fn call(
    url: &str,
    header_limit: Option<u32>,
    method: &Method,
    caller: &Caller,
    body: Vec<u8>,
) -> Answer {
    let mut endpoint = Channel::from_shared(url.to_owned())
        .expect("the suite's url")
        .connect_timeout(Duration::from_secs(5));
    if let Some(limit) = header_limit {
        endpoint = endpoint.http2_max_header_list_size(limit);
    }
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => return Answer::NotReady(format!("connect: {error:?}")),
    };
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    let mut request = tonic::Request::new(body);
    request.set_timeout(CALL_TIMEOUT);
    if let Some(token) = &caller.token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii token"),
        );
    }
    let path = PathAndQuery::from_maybe_shared(method.path.clone()).expect("a gRPC path");
    let exchange = async {
        if let Err(error) = grpc.ready().await {
            return Answer::NotReady(format!("{error:?}"));
        }
        if method.streaming {
            let mut stream = match grpc.server_streaming(request, path, RawCodec).await {
                Ok(response) => response.into_inner(),
                Err(status) => return Answer::Status(status),
            };
            match tokio::time::timeout(FIRST_EVENT_WAIT, stream.message()).await {
                Err(_) => Answer::Message(None),
                Ok(Ok(message)) => Answer::Message(message),
                Ok(Err(status)) => Answer::Status(status),
            }
        } else {
            match grpc.unary(request, path, RawCodec).await {
                Ok(response) => Answer::Message(Some(response.into_inner())),
                Err(status) => Answer::Status(status),
            }
        }
    };
    tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(1), exchange)
        .await
        .unwrap_or(Answer::TimedOut)
}

/// Sends one case and judges the answer. A transport error is sent again with a 64 MiB
/// header limit, to show what the server had tried to answer.
async fn send(url: &str, method: &Method, caller: &Caller, body: Vec<u8>) -> Outcome {
    let outcome = judge_answer(method, call(url, None, method, caller, body.clone()).await);
    match outcome {
        Outcome::Offence { code, message } if code.starts_with("transport") => {
            let again = match call(url, Some(64 << 20), method, caller, body).await {
                Answer::Status(status) => format!(
                    "{:?}, grpc-message of {} bytes, details of {} bytes: {:?}",
                    status.code(),
                    status.message().len(),
                    status.details().len(),
                    status.message().chars().take(120).collect::<String>()
                ),
                Answer::Message(_) => "a response message".to_owned(),
                Answer::NotReady(error) => format!("not ready: {error}"),
                Answer::TimedOut => "timed out".to_owned(),
            };
            Outcome::Offence {
                code,
                message: format!("{message} [sent again with a 64 MiB header limit: {again}]"),
            }
        }
        outcome => outcome,
    }
}

fn judge_answer(method: &Method, answer: Answer) -> Outcome {
    match answer {
        Answer::Message(None) => Outcome::Ok,
        Answer::Message(Some(bytes)) => check_response(method, &bytes),
        Answer::Status(status) if status.code() == Code::DeadlineExceeded => Outcome::Hung,
        Answer::Status(status) => judge(&status),
        Answer::NotReady(error) => Outcome::Offence {
            code: "transport error (not ready)".to_owned(),
            message: error,
        },
        Answer::TimedOut => Outcome::Hung,
    }
}

/// Every unary and server-streaming method of every `salesopp.*` service.
fn methods(pool: &DescriptorPool) -> Vec<Method> {
    let mut methods = Vec::new();
    for service in pool.services() {
        if !service.full_name().starts_with("salesopp.") {
            continue;
        }
        for method in service.methods() {
            assert!(
                !method.is_client_streaming(),
                "{} streams from the client: this test sends unary requests only",
                method.full_name()
            );
            methods.push(Method {
                path: format!("/{}/{}", service.full_name(), method.name()),
                full_name: method.full_name().to_owned(),
                streaming: method.is_server_streaming(),
                descriptor: method,
            });
        }
    }
    methods
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse::<u64>(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

/// Everything a case is built from.
struct Plan {
    seed: u64,
    fixtures: Fixtures,
    methods: Vec<Method>,
    /// Each method's raw cases, numbered after its random ones.
    raw: Vec<Vec<(String, Vec<u8>)>>,
    /// How many random cases each method gets.
    random_cases: Vec<usize>,
    callers: Vec<Caller>,
    /// Show whole requests (when replaying one case).
    full_shape: bool,
}

impl Plan {
    fn cases_of(&self, method: usize) -> usize {
        self.random_cases[method] + self.raw[method].len()
    }

    /// Case `number` of `method`: random cases first, then the method's raw ones.
    fn case(&self, method: usize, number: usize) -> Case {
        let m = &self.methods[method];
        let mut rng = Rng::for_case(self.seed, &m.full_name, number);
        let caller = caller_index(&mut rng);
        if number >= self.random_cases[method] {
            let (shape, body) = self.raw[method][number - self.random_cases[method]].clone();
            return Case {
                method,
                number,
                caller,
                body,
                shape,
            };
        }
        let mutate_it = rng.chance(8);
        let mut generator = Gen::new(rng.clone(), &self.fixtures);
        let message = generator.message(&m.descriptor.input(), 0, false);
        let body = message.encode_to_vec();
        let shape = if generator.sane {
            format!("(valid-ish) {}", shape(&message, self.full_shape))
        } else {
            shape(&message, self.full_shape)
        };
        let (shape, body) = if mutate_it {
            let (how, body) = mutate(&mut rng, body);
            (format!("mutated encoding ({how}) of {shape}"), body)
        } else {
            (shape, body)
        };
        Case {
            method,
            number,
            caller,
            body,
            shape,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------

/// The message with its variable parts (numbers, ids) blurred, for grouping.
fn blur(message: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in message.chars().take(200) {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    out
}

/// What kind of problem an offender shows, for grouping across methods.
fn class(offender: &Offender) -> String {
    let message = &offender.message;
    if message.starts_with("failed to decode Protobuf message") {
        return "the request does not decode (a prost DecodeError, answered as INTERNAL)"
            .to_owned();
    }
    if offender.code.starts_with("transport error") {
        let kind = message
            .split_once("kind: ")
            .and_then(|(_, rest)| rest.split_once(" }"))
            .map_or_else(|| blur(message), |(kind, _)| blur(kind));
        let again = message
            .split_once("header limit: ")
            .and_then(|(_, rest)| rest.split_once(',').map(|(code, _)| code.to_owned()))
            .unwrap_or_else(|| "?".to_owned());
        return format!(
            "the client's HTTP/2 layer refused the answer ({kind}); with a 64 MiB header limit the \
             same request answers {again} (the headers are too large)"
        );
    }
    blur(message)
}

fn report(offenders: &[Offender]) -> String {
    let mut by_class: BTreeMap<(String, String), Vec<&Offender>> = BTreeMap::new();
    for offender in offenders {
        by_class
            .entry((offender.code.clone(), class(offender)))
            .or_default()
            .push(offender);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} offending answers, {} kinds of problem:",
        offenders.len(),
        by_class.len()
    );
    for ((code, class), members) in &by_class {
        let mut methods: Vec<&str> = members.iter().map(|o| o.method.as_str()).collect();
        methods.sort_unstable();
        methods.dedup();
        let _ = writeln!(
            out,
            "\n- {code}: {class}\n  {} cases in {} methods: {}",
            members.len(),
            methods.len(),
            methods.join(", ")
        );
        for o in members.iter().take(3) {
            let _ = writeln!(
                out,
                "    e.g. {} case {} as {}: {:?}\n      request: {}",
                o.method,
                o.case,
                o.caller,
                o.message.chars().take(300).collect::<String>(),
                o.shape
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_survives_random_and_malformed_requests() {
    if std::env::var_os("FUZZ_LOG").is_some() {
        salesopp_kit::telemetry::init_logs();
    }
    let started = std::time::Instant::now();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(info.to_string());
        default_hook(info);
    }));

    let seed = env_number("FUZZ_SEED").unwrap_or_else(|| Uuid::new_v4().as_u64_pair().0);
    let cases = env_number("FUZZ_CASES").unwrap_or(150) as usize;
    let in_flight = env_number("FUZZ_IN_FLIGHT").map_or(IN_FLIGHT, |n| n.max(1) as usize);
    let only_method = std::env::var("FUZZ_METHOD").ok();
    let only_case = env_number("FUZZ_CASE").map(|c| c as usize);
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    println!("fuzz: FUZZ_SEED={seed:#x} FUZZ_CASES={cases}");

    let pool = DescriptorPool::decode(salesopp_proto::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set decodes");
    let methods = methods(&pool);
    assert!(
        methods.len() >= 24,
        "the descriptor set declares every call: {:?}",
        methods.iter().map(|m| &m.full_name).collect::<Vec<_>>()
    );
    let raw: Vec<Vec<(String, Vec<u8>)>> = methods
        .iter()
        .map(|m| raw_cases(&m.descriptor.input()))
        .collect();
    // A watch holds its slot while it waits for a first event: fewer of them.
    let random_cases: Vec<usize> = methods
        .iter()
        .map(|m| if m.streaming { cases / 3 } else { cases })
        .collect();

    let suite = TestSuite::spawn().await;
    let plan = Arc::new(Plan {
        seed,
        fixtures: create_fixtures(&suite).await,
        methods,
        raw,
        random_cases,
        callers: callers(),
        full_shape: only_case.is_some(),
    });
    let url = suite.url();

    // Case-major order: every method is under fire throughout, from several callers.
    let longest = (0..plan.methods.len())
        .map(|m| plan.cases_of(m))
        .max()
        .unwrap_or(0);
    let mut order = Vec::new();
    for number in 0..longest {
        for (m, method) in plan.methods.iter().enumerate() {
            let wanted = number < plan.cases_of(m)
                && only_method
                    .as_deref()
                    .is_none_or(|only| method.full_name.contains(only))
                && only_case.is_none_or(|only| only == number);
            if wanted {
                order.push((m, number));
            }
        }
    }
    let total = order.len();

    let results: Vec<(Case, Outcome)> = futures::stream::iter(order)
        .map(|(m, number)| {
            let plan = Arc::clone(&plan);
            let url = url.clone();
            async move {
                let mut case = plan.case(m, number);
                let body = std::mem::take(&mut case.body);
                let outcome = send(&url, &plan.methods[m], &plan.callers[case.caller], body).await;
                if trace {
                    println!(
                        "fuzz: trace {} case {} as {}: {} <- {}",
                        plan.methods[m].full_name,
                        number,
                        plan.callers[case.caller].name,
                        outcome.describe(),
                        case.shape
                    );
                }
                (case, outcome)
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;

    // Per method: how the answers spread over the codes (shows what the fuzz reached).
    let mut spread: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut offenders = Vec::new();
    let mut hung = Vec::new();
    for (case, outcome) in results {
        let method = &plan.methods[case.method];
        let caller = plan.callers[case.caller].name;
        let bucket = match &outcome {
            Outcome::Ok => "OK".to_owned(),
            Outcome::Code(code, _) => format!("{code:?}"),
            Outcome::Hung => "hung".to_owned(),
            Outcome::Offence { code, .. } => format!("!{code}"),
        };
        *spread
            .entry(method.full_name.clone())
            .or_default()
            .entry(bucket)
            .or_default() += 1;
        if only_case.is_some() {
            println!(
                "fuzz: {} case {} as {caller}: {}\n  request: {}",
                method.full_name,
                case.number,
                outcome.describe(),
                case.shape
            );
        }
        match outcome {
            Outcome::Offence { code, message } => offenders.push(Offender {
                method: method.full_name.clone(),
                case: case.number,
                caller,
                shape: case.shape,
                code,
                message,
            }),
            Outcome::Hung => hung.push(format!(
                "{} case {} as {caller}: {}",
                method.full_name, case.number, case.shape
            )),
            Outcome::Ok | Outcome::Code(..) => {}
        }
    }
    println!("fuzz: {total} calls in {:.1?}", started.elapsed());
    for (method, codes) in &spread {
        println!("fuzz: {method}: {codes:?}");
    }
    for line in &hung {
        println!("fuzz: hung past {CALL_TIMEOUT:?} (not a failure): {line}");
    }
    offenders.sort_by(|a, b| (&a.method, a.case).cmp(&(&b.method, b.case)));
    for o in &offenders {
        println!(
            "fuzz: OFFENDER {} case {} as {}: {}: {:?}\n    request: {}",
            o.method, o.case, o.caller, o.code, o.message, o.shape
        );
    }

    // The server lives: health, a normal read on a fresh connection, and the invariants.
    let alive = still_alive(&suite, &plan.fixtures).await;
    let panics = PANICS.lock().unwrap_or_else(|e| e.into_inner()).clone();

    let mut failures = Vec::new();
    if !offenders.is_empty() {
        failures.push(report(&offenders));
    }
    if let Err(problem) = alive {
        failures.push(format!(
            "the server is not well after the fuzzing: {problem}"
        ));
    }
    if !panics.is_empty() {
        failures.push(format!(
            "{} panics in the process, e.g.: {:?}",
            panics.len(),
            &panics[..panics.len().min(5)]
        ));
    }
    assert!(
        failures.is_empty(),
        "fuzz with FUZZ_SEED={seed:#x} FUZZ_CASES={cases} failed:\n{}",
        failures.join("\n")
    );
}

/// Health of every service, a normal GetOpportunity on a fresh connection, and R3/R4.
async fn still_alive(suite: &TestSuite, fixtures: &Fixtures) -> Result<(), String> {
    let within = Duration::from_secs(10);
    let mut health = HealthClient::new(suite.channel().await);
    for service in [
        "",
        "salesopp.statusconfig.v1.StatusConfigService",
        "salesopp.customer.v1.CustomerService",
        "salesopp.opportunity.v1.OpportunityService",
        "salesopp.gateway.v1.GatewayService",
    ] {
        let answer = tokio::time::timeout(
            within,
            health.check(HealthCheckRequest {
                service: service.to_owned(),
            }),
        )
        .await
        .map_err(|_| format!("health of {service:?} hung"))?
        .map_err(|s| format!("health of {service:?}: {s:?}"))?
        .into_inner();
        if answer.status != ServingStatus::Serving as i32 {
            return Err(format!("health of {service:?} is {:?}", answer.status));
        }
    }

    let mut opportunities = suite.opportunities().await;
    let got = tokio::time::timeout(
        within,
        opportunities.get_opportunity(authed(
            &admin_token(),
            opb::GetOpportunityRequest {
                id: fixtures.opportunity_id.clone(),
            },
        )),
    )
    .await
    .map_err(|_| "GetOpportunity hung".to_owned())?
    .map_err(|s| format!("GetOpportunity: {s:?}"))?
    .into_inner();
    if got.id != fixtures.opportunity_id {
        return Err(format!("GetOpportunity answered another row: {got:?}"));
    }

    let mut statuses = suite.statuses().await;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = statuses
            .list_statuses(authed(
                &admin_token(),
                spb::ListStatusesRequest {
                    page_token: page_token.clone(),
                    show_archived: true,
                    ..Default::default()
                },
            ))
            .await
            .map_err(|s| format!("ListStatuses: {s:?}"))?
            .into_inner();
        all.extend(page.statuses);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let live: Vec<&spb::OpportunityStatus> = all.iter().filter(|s| !s.archived).collect();
    let defaults: Vec<_> = live.iter().filter(|s| s.is_default).collect();
    if defaults.len() != 1 || defaults[0].kind != spb::StatusKind::Open as i32 {
        return Err(format!("R4: not exactly one OPEN default: {defaults:?}"));
    }
    for (kind, probability) in [(spb::StatusKind::Won, 100), (spb::StatusKind::Lost, 0)] {
        let closing: Vec<_> = live.iter().filter(|s| s.kind == kind as i32).collect();
        if closing.len() != 1 || closing[0].probability != probability {
            return Err(format!(
                "R3: not exactly one {kind:?} at {probability}: {closing:?}"
            ));
        }
    }
    if let Some(bad) = live
        .iter()
        .find(|s| s.kind == spb::StatusKind::Open as i32 && !(1..=99).contains(&s.probability))
    {
        return Err(format!("R3: an OPEN status outside 0..100: {bad:?}"));
    }
    Ok(())
}
