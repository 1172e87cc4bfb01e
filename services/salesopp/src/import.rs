//! `salesopp import customers|opportunities FILE.csv`: writes the rows of a CSV file through
//! the batch calls (R21), and can be stopped and run again at any moment.
//!
//! Every row becomes the request of the single call (CreateCustomer, CreateOpportunity) with
//! its own `request_id`, `import:<key>:<line>` ([`request_id`]): the key is the first 16 hex
//! digits of the file's SHA-256 ([`file_key`]), the line the one the row starts on. A run that
//! was interrupted (killed, the suite restarted, `--stop-after-rows`) is finished by running
//! the same file again: each row written before is answered with its first result and written
//! nothing again (R11 per item, whichever batch or call wrote it), the others are created.
//! That holds for the same caller (the token's `sub`) within the 24 hours the suite keeps
//! request ids.
//!
//! The file is read twice: once to hash it and count its rows (the ids and the progress bar
//! need both before the first call), then row by row on a blocking thread that hands
//! batches to up to `--concurrency` calls in flight. Each batch is sent with
//! `allow_partial_success`, so one bad row fails alone, with the suite's own reason, reported
//! with its line; a transient failure of the whole batch is retried as it is (its items' ids
//! make that safe).
//!
//! The library entry point is [`run`] with [`ImportOptions`]: the end-to-end tests call it
//! directly; `salesopp import` builds the options from [`ImportArgs`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use prost::{Message, Name};
use salesopp_kit::config::AuthArgs;
use salesopp_proto::common::v1::{BatchItemError, Date, Money};
use salesopp_proto::customer::v1 as customer;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_proto::opportunity::v1 as opportunity;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_proto::statusconfig::v1 as statusconfig;
use salesopp_proto::statusconfig::v1::status_config_service_client::StatusConfigServiceClient;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use crate::TokenMinter;

/// Most rows in one batch call: the batch calls' own limit (R21).
pub const MAX_BATCH_SIZE: usize = 1000;
/// The currency of an amount whose row gives no `currency_code`.
pub const DEFAULT_CURRENCY: &str = "THB";
/// Most bytes of requests in one batch: the suite refuses messages over 4 MiB (tonic's
/// default), and 1,000 rows with long Thai addresses (3 bytes a character) can pass that.
const MAX_BATCH_BYTES: usize = 3 << 20;
/// The answer carries every row back with the server's fields added: room beyond the 4 MiB
/// default.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// How long one batch may take before it is given up on and retried (it is one transaction
/// of up to 1,000 rows on a suite that may be busy).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The waits before each retry of a transient failure: about a minute in all, time for a
/// suite to restart; past it the import stops (run it again to resume).
const RETRY_DELAYS_MS: [u64; 8] = [250, 500, 1_000, 2_000, 4_000, 8_000, 15_000, 30_000];
/// Page size of the look-ups (the most ListStatuses and ListCustomers answer).
const PAGE_SIZE: i32 = 500;
/// Failed rows the summary lists one by one; the rest are counted.
const SHOWN_FAILURES: usize = 50;
/// A minted token outlives any import.
const TOKEN_TTL_SECONDS: u64 = 24 * 3600;

/// The columns of a customers file, in the order `--help` lists them.
const CUSTOMER_COLUMNS: &[&str] = &[
    "code",
    "display_name",
    "email",
    "phone",
    "contact_name",
    "tax_id",
    "address",
    "owner_id",
];
/// The columns of an opportunities file.
const OPPORTUNITY_COLUMNS: &[&str] = &[
    "customer_id",
    "customer_code",
    "title",
    "amount",
    "currency_code",
    "expected_close_date",
    "status_id",
    "status",
    "owner_id",
    "lost_reason",
    "next_step",
    "note",
];

/// The long help of `salesopp import`: the columns, the resume rule, the exit status.
pub const IMPORT_HELP: &str = "\
Columns (the header row names them, in any order, ignoring case; an empty cell means not given):
  customers:      code, display_name (required), email, phone, contact_name, tax_id, address,
                  owner_id
  opportunities:  customer_id or customer_code (one of them, on every row), title (required),
                  amount, currency_code, expected_close_date, status_id or status, owner_id,
                  lost_reason, next_step, note

Text is sent as it is, Thai included; the suite validates and canonicalizes it (phones such as
081-234-5678 or +66 81 234 5678 become +66812345678). amount: a decimal such as 125000.50 or
1,250,000 (not negative, at most 9 decimals), in currency_code (ISO 4217), THB when the row
has no currency_code. expected_close_date: YYYY-MM-DD. status: a status's display name or one
of its localized names; customer_code: a customer's code; both ignoring case, looked up once
before the first row is sent.

Resuming: each row's request_id is import:<the first 16 hex digits of the file's SHA-256>:<its
line>. Run the same file again, as the same --sub and within 24 hours, and the rows written
before are answered as they were first written, not written again; only the others are
created. An edited file has another hash, so its rows are new ones: to re-run a corrected copy
whose rows kept their lines, give --key the key of the first run (the summary prints it).

--dry-run reads and checks every row (required fields, amounts, dates, codes, and the status
names and customer codes when the suite answers; without it, only their syntax) and writes
nothing. Phones, emails and tax ids are checked by the suite, when the rows are written.

Exit status: 0 every row written (or valid, with --dry-run); 2 a row failed or was left unread
(each is listed with its line); 1 the import could not run.";

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Customers, through CustomerService.BatchCreateCustomers.
    Customers,
    /// Opportunities, through OpportunityService.BatchCreateOpportunities.
    Opportunities,
}

impl Kind {
    /// The header names a file of this kind may use.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Kind::Customers => CUSTOMER_COLUMNS,
            Kind::Opportunities => OPPORTUNITY_COLUMNS,
        }
    }

    /// The columns a header must have: one of each group.
    fn required(self) -> &'static [&'static [&'static str]] {
        match self {
            Kind::Customers => &[&["display_name"]],
            Kind::Opportunities => &[&["title"], &["customer_id", "customer_code"]],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Customers => "customers",
            Kind::Opportunities => "opportunities",
        })
    }
}

/// A bearer token, kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Token {
    fn from(token: String) -> Self {
        Token(token)
    }
}

impl FromStr for Token {
    type Err = std::convert::Infallible;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        Ok(Token(token.trim().to_owned()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(redacted)")
    }
}

/// What `salesopp import` takes on its command line.
#[derive(clap::Args, Debug)]
#[command(after_long_help = IMPORT_HELP)]
pub struct ImportArgs {
    /// What the file holds.
    #[arg(value_enum)]
    pub kind: Kind,
    /// The CSV file: UTF-8 (a BOM is fine), comma-separated, a header row naming the columns
    /// (see --help).
    pub file: PathBuf,
    /// The suite's URL; when absent, http://<SALESOPP_LISTEN> (127.0.0.1 when that address
    /// is unspecified, e.g. 0.0.0.0).
    #[arg(long, env = "SALESOPP_URL")]
    pub url: Option<String>,
    /// The address the suite serves on, as `serve` reads it: the URL when --url is absent.
    #[arg(
        long,
        env = "SALESOPP_LISTEN",
        default_value = "127.0.0.1:50051",
        hide = true
    )]
    pub listen: SocketAddr,
    /// The bearer token to call the suite with; when absent, one is minted with the suite's
    /// HS256 secret for --sub, --name, --team and --role.
    #[arg(long, env = "SALESOPP_TOKEN", hide_env_values = true)]
    pub token: Option<Token>,
    /// The minted token's `sub`: who the rows are written as. Resume an import as the same
    /// caller: request ids are remembered per caller.
    #[arg(long, default_value = "importer")]
    pub sub: String,
    /// The minted token's display name (`name`).
    #[arg(long, default_value = "CSV import")]
    pub name: String,
    /// The minted token's team (`team`).
    #[arg(long, default_value = "")]
    pub team: String,
    /// The minted token's role: sales_rep, sales_manager or sales_admin (R12 decides whose
    /// opportunities it may open).
    #[arg(long, default_value = "sales_admin")]
    pub role: String,
    // The suite's token settings, for minting: its HS256 secret, issuer and audience.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Rows per batch call, 1..1000 (fewer when the rows are long: a call carries at most
    /// 3 MiB).
    #[arg(long, default_value_t = MAX_BATCH_SIZE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub batch_size: usize,
    /// Batch calls in flight at once, 1..64.
    #[arg(long, default_value_t = 4,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub concurrency: usize,
    /// Check every row and list each bad one with its line; write nothing. Status names and
    /// customer codes are looked up when the suite answers, else only syntax is checked.
    #[arg(long)]
    pub dry_run: bool,
    /// The request ids' key instead of the file's hash: to re-run a corrected copy of a file
    /// (its rows on the same lines) as the first run, whose key the summary printed.
    #[arg(long)]
    pub key: Option<String>,
    /// For tests: stop after reading this many rows, as an interrupted import would.
    #[arg(long, hide = true)]
    pub stop_after_rows: Option<u64>,
}

impl ImportArgs {
    /// The options these arguments mean: the suite's URL resolved, and a token, given or
    /// minted. A dry run may go without one (it then checks only the file itself).
    pub fn options(self) -> anyhow::Result<ImportOptions> {
        let url = crate::demo::suite_url(self.url.as_deref(), self.listen);
        let token = match &self.token {
            Some(token) => Some(token.clone()),
            None if self.dry_run => self.mint().ok(),
            None => Some(self.mint()?),
        };
        Ok(ImportOptions {
            kind: self.kind,
            file: self.file,
            url,
            token,
            batch_size: self.batch_size,
            concurrency: self.concurrency,
            dry_run: self.dry_run,
            key: self.key,
            stop_after_rows: self.stop_after_rows,
            progress: true,
        })
    }

    fn mint(&self) -> anyhow::Result<Token> {
        anyhow::ensure!(
            salesopp_kit::Role::parse(&self.role).is_some(),
            "unknown role \"{}\": use sales_rep, sales_manager or sales_admin",
            self.role
        );
        let minter = TokenMinter::new(&self.auth)
            .context("no --token (SALESOPP_TOKEN) was given, and none can be minted")?;
        let token = minter.mint(
            &self.sub,
            &self.name,
            &self.team,
            std::slice::from_ref(&self.role),
            TOKEN_TTL_SECONDS,
        )?;
        Ok(Token(token))
    }
}

/// One import: what [`run`] does.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub kind: Kind,
    pub file: PathBuf,
    /// The suite's URL, e.g. `http://127.0.0.1:50051`.
    pub url: String,
    /// Required unless `dry_run`; a dry run without one checks only the file itself.
    pub token: Option<Token>,
    /// Rows per batch call, 1..=[`MAX_BATCH_SIZE`].
    pub batch_size: usize,
    /// Batch calls in flight at once, at least 1.
    pub concurrency: usize,
    pub dry_run: bool,
    /// The request ids' key; `None`: [`file_key`] of the file.
    pub key: Option<String>,
    /// Stop after reading this many rows (the rest are counted as unread), as an
    /// interruption would.
    pub stop_after_rows: Option<u64>,
    /// Draw the progress bar on stderr (it stays hidden anyway when stderr is not a
    /// terminal).
    pub progress: bool,
}

impl ImportOptions {
    /// The command line's defaults for importing `file` as `kind` into the suite at `url`
    /// with `token`; no progress bar.
    pub fn new(
        kind: Kind,
        file: impl Into<PathBuf>,
        url: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        ImportOptions {
            kind,
            file: file.into(),
            url: url.into(),
            token: Some(Token(token.into())),
            batch_size: MAX_BATCH_SIZE,
            concurrency: 4,
            dry_run: false,
            key: None,
            stop_after_rows: None,
            progress: false,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=MAX_BATCH_SIZE).contains(&self.batch_size),
            "the batch size must be 1..{MAX_BATCH_SIZE}, not {}",
            self.batch_size
        );
        anyhow::ensure!(self.concurrency >= 1, "the concurrency must be at least 1");
        if let Some(key) = &self.key {
            anyhow::ensure!(
                (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()),
                "--key must be 1..64 printable ASCII characters, without spaces"
            );
        }
        Ok(())
    }
}

/// What an import did. `read == written + failed.len() + (valid rows of a dry run)` when
/// it ran to the end; `unread` rows were left when it was stopped early.
#[derive(Debug, Clone)]
pub struct Summary {
    pub kind: Kind,
    pub file: PathBuf,
    /// The request ids' key: `import:<key>:<line>`.
    pub key: String,
    pub dry_run: bool,
    /// Data rows read (the header row not counted).
    pub read: u64,
    /// Rows that passed the local checks.
    pub valid: u64,
    /// Rows the suite holds now, created by this run or by an earlier run of the same file
    /// (a replay answers the first result: the two cannot be told apart). 0 in a dry run.
    pub written: u64,
    /// The rows not written (or, in a dry run, not valid): line and reason, by line.
    pub failed: Vec<(u64, String)>,
    /// Rows of the file not read (`stop_after_rows`).
    pub unread: u64,
    /// Dry run: why status names and customer codes were not looked up, when they were not.
    pub unresolved: Option<String>,
    pub elapsed: Duration,
}

impl Summary {
    /// Every row of the file written (or, in a dry run, valid).
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.unread == 0
    }

    /// Rows read per second.
    pub fn rows_per_second(&self) -> f64 {
        self.read as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.dry_run {
            "dry run, nothing written".to_owned()
        } else {
            format!("request ids import:{}:<line>", self.key)
        };
        writeln!(
            f,
            "import {} from {} ({how})",
            self.kind,
            self.file.display()
        )?;
        writeln!(f, "  rows read  {}", self.read)?;
        if self.dry_run {
            writeln!(f, "  valid      {}", self.valid)?;
            if let Some(why) = &self.unresolved {
                writeln!(
                    f,
                    "             status names and customer codes not looked up: {why}"
                )?;
            }
        } else {
            writeln!(
                f,
                "  written    {} (new, or already imported by an earlier run of this file)",
                self.written
            )?;
        }
        writeln!(f, "  failed     {}", self.failed.len())?;
        for (line, reason) in self.failed.iter().take(SHOWN_FAILURES) {
            writeln!(f, "    line {line}: {reason}")?;
        }
        if self.failed.len() > SHOWN_FAILURES {
            writeln!(f, "    ... and {} more", self.failed.len() - SHOWN_FAILURES)?;
        }
        if self.unread > 0 {
            writeln!(
                f,
                "  not read   {} (stopped early: run the same file again to import them)",
                self.unread
            )?;
        }
        writeln!(
            f,
            "  elapsed    {:.1} s, {:.0} rows/s",
            self.elapsed.as_secs_f64(),
            self.rows_per_second()
        )
    }
}

/// The key of a file's request ids: the first 16 hex digits of the SHA-256 of its bytes.
pub fn file_key(contents: &[u8]) -> String {
    key_of_digest(&Sha256::digest(contents))
}

fn key_of_digest(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The `request_id` of the row starting on `line` of the file with `key`: the same on every
/// run of that file, so a re-run replays the rows already written (R11).
pub fn request_id(key: &str, line: u64) -> String {
    format!("import:{key}:{line}")
}

/// `amount` as Money's `units` and `nanos`, exactly: a decimal of at most 9 decimals, not
/// negative, its whole part plain (`1250000`) or grouped by thousands (`1,250,000`).
pub fn parse_amount(text: &str) -> Result<(i64, i32), String> {
    let text = text.trim();
    let not_decimal = || format!("\"{text}\" is not a decimal number such as 125000.50");
    if text.starts_with('-') {
        return Err(format!("\"{text}\" is negative"));
    }
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let digits = ungroup(whole).ok_or_else(not_decimal)?;
    let units: i64 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" is too large"))?;
    let nanos = match fraction {
        None => 0,
        Some(fraction) if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(not_decimal());
        }
        Some(fraction) if fraction.len() > 9 => {
            return Err(format!("\"{text}\" has more than 9 decimals"));
        }
        Some(fraction) => {
            let scale = 10_i32.pow(9 - fraction.len() as u32);
            fraction.parse::<i32>().map_err(|_| not_decimal())? * scale
        }
    };
    Ok((units, nanos))
}

/// The digits of a whole part, plain or grouped by thousands with commas; `None` when it is
/// anything else (a sign, an exponent, groups of other sizes).
fn ungroup(whole: &str) -> Option<String> {
    let groups: Vec<&str> = whole.split(',').collect();
    let all_digits = |group: &&str| !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit());
    if !groups.iter().all(all_digits) {
        return None;
    }
    if groups.len() > 1 && (groups[0].len() > 3 || groups[1..].iter().any(|g| g.len() != 3)) {
        return None;
    }
    Some(groups.concat())
}

/// A `YYYY-MM-DD` calendar date.
pub fn parse_date(text: &str) -> Result<Date, String> {
    let text = text.trim();
    let not_a_date = || format!("\"{text}\" is not a date as YYYY-MM-DD, e.g. 2026-12-31");
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return Err(not_a_date());
    }
    let number = |from: usize, to: usize| {
        text.get(from..to)
            .filter(|part| part.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|part| part.parse::<i32>().ok())
    };
    let (Some(year), Some(month), Some(day)) = (number(0, 4), number(5, 7), number(8, 10)) else {
        return Err(not_a_date());
    };
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(format!("\"{text}\" is not a calendar date"));
    }
    Ok(Date { year, month, day })
}

fn days_in_month(year: i32, month: i32) -> i32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// An amount's currency: the row's ISO 4217 code (upper-cased, as Money wants it), or
/// [`DEFAULT_CURRENCY`] when the row gives none.
fn parse_currency(text: &str) -> Result<String, String> {
    let code = text.trim();
    if code.is_empty() {
        Ok(DEFAULT_CURRENCY.to_owned())
    } else if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_uppercase())
    } else {
        Err(format!(
            "\"{code}\" is not an ISO 4217 code such as THB or USD"
        ))
    }
}

/// A customer code's syntax (CustomerService's rule): 1..50 ASCII letters, digits, `-`, `_`.
fn valid_code(code: &str) -> bool {
    (1..=50).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Names compared as the suite's look-ups compare them: ignoring case.
fn fold(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Which column holds which field: the header row, checked.
#[derive(Debug, Clone)]
pub struct Columns {
    index: HashMap<&'static str, usize>,
}

impl Columns {
    /// The columns of a `kind` file with this header. Names are trimmed and compared
    /// ignoring case; an unknown, repeated or missing required name is refused with the
    /// names allowed.
    pub fn from_header<'h>(
        kind: Kind,
        header: impl IntoIterator<Item = &'h str>,
    ) -> Result<Columns, String> {
        let allowed = kind.columns();
        let mut index = HashMap::new();
        let mut unknown = Vec::new();
        let mut repeated = Vec::new();
        let mut count = 0;
        for (position, raw) in header.into_iter().enumerate() {
            count += 1;
            // csv strips a BOM; one left before a quoted first name is stripped here.
            let name = raw
                .trim_start_matches('\u{feff}')
                .trim()
                .to_ascii_lowercase();
            match allowed.iter().find(|known| **known == name) {
                Some(known) => {
                    if index.insert(*known, position).is_some() {
                        repeated.push(*known);
                    }
                }
                None if name.is_empty() => {
                    unknown.push(format!("column {} (no name)", position + 1))
                }
                None => unknown.push(format!("\"{raw}\"")),
            }
        }
        let mut problems = Vec::new();
        if count == 0 {
            problems.push("the file is empty: its first row must name the columns".to_owned());
        }
        if !unknown.is_empty() {
            problems.push(format!("unknown columns {}", unknown.join(", ")));
        }
        if !repeated.is_empty() {
            problems.push(format!("repeated columns {}", repeated.join(", ")));
        }
        for group in kind.required() {
            if count > 0 && !group.iter().any(|name| index.contains_key(name)) {
                problems.push(format!("no {} column", group.join(" or ")));
            }
        }
        if problems.is_empty() {
            Ok(Columns { index })
        } else {
            Err(format!(
                "the header of this {kind} file: {}; the columns of a {kind} file are {}",
                problems.join("; "),
                allowed.join(", ")
            ))
        }
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The row's value of column `name`; empty when the file has no such column.
    fn field<'r>(&self, record: &'r csv::StringRecord, name: &str) -> &'r str {
        self.index
            .get(name)
            .and_then(|&position| record.get(position))
            .unwrap_or("")
    }
}

/// What is wrong with one row, all of it at once.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// The suite's own input check, the one its codec runs on every request (text Postgres
    /// cannot hold, sizes no call takes): a row failing it would fail its whole batch, so
    /// it is a bad row here, named by field.
    fn check_input<M: Message + Name>(&mut self, request: &M) {
        for violation in salesopp_proto::input::check(&M::full_name(), &request.encode_to_vec()) {
            self.add(format!("{}: {}", violation.field, violation.description));
        }
    }

    fn into_result<T>(self, value: T) -> Result<T, String> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0.join("; "))
        }
    }
}

/// The ids the suite knows by a name: statuses by display or localized name, customers by
/// code. Loaded once, before the first row.
#[derive(Debug, Default)]
struct Named {
    /// "status", "customer".
    noun: &'static str,
    /// How a name names one: "named", "with code".
    by: &'static str,
    by_name: HashMap<String, String>,
    ids: HashSet<String>,
    /// Said after an unknown name, e.g. the statuses there are.
    hint: String,
}

/// What a row's names resolve with: `None` where the file does not need it, or a dry run
/// could not reach the suite.
#[derive(Debug, Default)]
struct Lookups {
    statuses: Option<Named>,
    customers: Option<Named>,
}

impl Lookups {
    /// Whether a file with these columns names statuses or customers: `status_id` is
    /// checked too when the statuses are at hand.
    fn wanted(columns: &Columns) -> bool {
        columns.has("status") || columns.has("status_id") || columns.has("customer_code")
    }

    /// The look-ups `columns` call for, from the suite.
    async fn load(
        suite: &Suite,
        columns: &Columns,
        progress: &ProgressBar,
    ) -> anyhow::Result<Lookups> {
        let statuses = if columns.has("status") || columns.has("status_id") {
            let statuses = suite.statuses(progress).await;
            Some(statuses.map_err(|status| suite.refused(status))?)
        } else {
            None
        };
        let customers = if columns.has("customer_code") {
            let customers = suite.customer_codes(progress).await;
            Some(customers.map_err(|status| suite.refused(status))?)
        } else {
            None
        };
        Ok(Lookups {
            statuses,
            customers,
        })
    }
}

/// The id a row gives in `id_column`, or names in `name_column` (both: they must agree),
/// checked against `known` when it was loaded.
fn resolve(
    known: Option<&Named>,
    (id_column, id): (&str, &str),
    (name_column, name): (&str, &str),
    problems: &mut Problems,
) -> String {
    let Some(known) = known else {
        return id.to_owned();
    };
    if !id.is_empty() && !known.ids.contains(id) {
        problems.add(format!(
            "{id_column}: no {} has the id \"{id}\"",
            known.noun
        ));
    }
    if name.is_empty() {
        return id.to_owned();
    }
    match known.by_name.get(&fold(name)) {
        None => {
            problems.add(format!(
                "{name_column}: no {} {} \"{name}\"{}",
                known.noun, known.by, known.hint
            ));
            id.to_owned()
        }
        Some(found) if !id.is_empty() && found != id => {
            problems.add(format!(
                "{name_column} \"{name}\" is the {} {found}, not {id_column} {id}",
                known.noun
            ));
            id.to_owned()
        }
        Some(found) => found.clone(),
    }
}

/// The CreateCustomer request of one row.
fn customer_request(
    columns: &Columns,
    record: &csv::StringRecord,
    request_id: String,
) -> Result<customer::CreateCustomerRequest, String> {
    let field = |name| columns.field(record, name);
    let mut problems = Problems::default();
    if field("display_name").trim().is_empty() {
        problems.add("display_name is required");
    }
    let code = field("code").trim();
    if !code.is_empty() && !valid_code(code) {
        problems.add(format!(
            "code \"{code}\": 1..50 ASCII letters, digits, - or _"
        ));
    }
    let request = customer::CreateCustomerRequest {
        customer: Some(customer::Customer {
            code: code.to_owned(),
            display_name: field("display_name").to_owned(),
            email: field("email").to_owned(),
            phone: field("phone").to_owned(),
            contact_name: field("contact_name").to_owned(),
            tax_id: field("tax_id").to_owned(),
            address: field("address").to_owned(),
            owner_id: field("owner_id").trim().to_owned(),
            ..Default::default()
        }),
        request_id,
    };
    problems.check_input(&request);
    problems.into_result(request)
}

/// The CreateOpportunity request of one row, its customer and status resolved.
fn opportunity_request(
    columns: &Columns,
    lookups: &Lookups,
    record: &csv::StringRecord,
    request_id: String,
) -> Result<opportunity::CreateOpportunityRequest, String> {
    let field = |name| columns.field(record, name);
    let mut problems = Problems::default();
    if field("title").trim().is_empty() {
        problems.add("title is required");
    }
    let (customer_id, customer_code) = (field("customer_id").trim(), field("customer_code").trim());
    if customer_id.is_empty() && customer_code.is_empty() {
        problems.add("customer_id or customer_code is required");
    }
    let customer_id = resolve(
        lookups.customers.as_ref(),
        ("customer_id", customer_id),
        ("customer_code", customer_code),
        &mut problems,
    );
    let status_id = resolve(
        lookups.statuses.as_ref(),
        ("status_id", field("status_id").trim()),
        ("status", field("status").trim()),
        &mut problems,
    );
    let amount = match field("amount").trim() {
        "" => None,
        text => match (parse_amount(text), parse_currency(field("currency_code"))) {
            (Ok((units, nanos)), Ok(currency_code)) => Some(Money {
                currency_code,
                units,
                nanos,
            }),
            (amount, currency) => {
                if let Err(problem) = amount {
                    problems.add(format!("amount: {problem}"));
                }
                if let Err(problem) = currency {
                    problems.add(format!("currency_code: {problem}"));
                }
                None
            }
        },
    };
    let expected_close_date = match field("expected_close_date").trim() {
        "" => None,
        text => parse_date(text)
            .map_err(|problem| problems.add(format!("expected_close_date: {problem}")))
            .ok(),
    };
    let request = opportunity::CreateOpportunityRequest {
        opportunity: Some(opportunity::Opportunity {
            customer_id,
            owner_id: field("owner_id").trim().to_owned(),
            title: field("title").to_owned(),
            amount,
            expected_close_date,
            status_id,
            lost_reason: field("lost_reason").to_owned(),
            next_step: field("next_step").to_owned(),
            ..Default::default()
        }),
        request_id,
        note: field("note").to_owned(),
    };
    problems.check_input(&request);
    problems.into_result(request)
}

/// The requests of one batch, of the file's kind.
#[derive(Debug, Clone)]
enum Requests {
    Customers(Vec<customer::CreateCustomerRequest>),
    Opportunities(Vec<opportunity::CreateOpportunityRequest>),
}

/// One batch call's rows: their lines, and their requests in the same order.
#[derive(Debug, Clone)]
struct Batch {
    lines: Vec<u64>,
    requests: Requests,
}

impl Batch {
    fn len(&self) -> usize {
        self.lines.len()
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Keeps the rows at the positions `keep` says.
    fn retain(&mut self, keep: impl Fn(usize) -> bool) {
        fn by_position<T>(items: &mut Vec<T>, keep: &impl Fn(usize) -> bool) {
            let mut position = 0;
            items.retain(|_| {
                position += 1;
                keep(position - 1)
            });
        }
        by_position(&mut self.lines, &keep);
        match &mut self.requests {
            Requests::Customers(requests) => by_position(requests, &keep),
            Requests::Opportunities(requests) => by_position(requests, &keep),
        }
    }

    fn describe(&self) -> String {
        match (self.lines.first(), self.lines.last()) {
            (Some(first), Some(last)) => format!("the batch of lines {first}..{last}"),
            _ => "an empty batch".to_owned(),
        }
    }
}

/// What the reader hands on: a batch to send, and the rows it found bad on the way.
#[derive(Debug)]
struct Chunk {
    batch: Batch,
    bad: Vec<(u64, String)>,
}

/// A `Read` that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

fn csv_reader<R: Read>(source: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(source)
}

fn open(path: &Path) -> anyhow::Result<File> {
    File::open(path).with_context(|| format!("cannot open {}", path.display()))
}

/// The first pass over the file: its key, its header, and how many rows follow it.
#[derive(Debug)]
struct Scan {
    key: String,
    header: Vec<String>,
    rows: u64,
}

fn scan(source: impl Read) -> anyhow::Result<Scan> {
    let mut hashing = Hashing {
        inner: source,
        hasher: Sha256::new(),
    };
    let (header, rows) = {
        let mut reader = csv_reader(&mut hashing);
        let header: Vec<String> = reader
            .headers()
            .context("the header row: save the file as UTF-8")?
            .iter()
            .map(str::to_owned)
            .collect();
        let mut record = csv::ByteRecord::new();
        let mut rows = 0_u64;
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(true) => rows += 1,
                Ok(false) => break,
                Err(error) if matches!(error.kind(), csv::ErrorKind::Io(_)) => {
                    return Err(error).context("reading the file");
                }
                // A bad row is still a row: the second pass reports it.
                Err(_) => rows += 1,
            }
        }
        (header, rows)
    };
    // Whatever the CSV reader left unread still belongs to the file's bytes.
    io::copy(&mut hashing, &mut io::sink()).context("reading the file")?;
    Ok(Scan {
        key: key_of_digest(&hashing.hasher.finalize()),
        header,
        rows,
    })
}

/// Why a record could not be read as a row.
fn unreadable(error: &csv::Error, header: &[String]) -> String {
    match error.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!(
            "column {} is not valid UTF-8: save the file as UTF-8",
            header
                .get(err.field())
                .cloned()
                .unwrap_or_else(|| (err.field() + 1).to_string())
        ),
        csv::ErrorKind::UnequalLengths { len, .. } => {
            format!("{len} fields, where the header has {}", header.len())
        }
        _ => error.to_string(),
    }
}

/// How the second pass reads the file.
struct Reading<'a> {
    header: &'a [String],
    key: &'a str,
    batch_size: usize,
    stop_after_rows: Option<u64>,
}

/// The second pass: each row read, made into its request by `request` (or found bad), and
/// handed on in batches of at most `batch_size` rows and [`MAX_BATCH_BYTES`]. Ends early,
/// without error, when the receiver is gone (the import stopped).
fn read_rows<R: Read, T: Message>(
    source: R,
    reading: &Reading<'_>,
    request: impl Fn(&csv::StringRecord, String) -> Result<T, String>,
    wrap: fn(Vec<T>) -> Requests,
    chunks: &mpsc::Sender<Chunk>,
) -> anyhow::Result<()> {
    let mut reader = csv_reader(source);
    let mut lines = Vec::new();
    let mut requests = Vec::new();
    let mut bytes = 0;
    let mut bad = Vec::new();
    let hand_on = |lines: &mut Vec<u64>, requests: &mut Vec<T>, bad: &mut Vec<_>| {
        let chunk = Chunk {
            batch: Batch {
                lines: std::mem::take(lines),
                requests: wrap(std::mem::take(requests)),
            },
            bad: std::mem::take(bad),
        };
        chunks.blocking_send(chunk).is_ok()
    };
    let limit = reading.stop_after_rows.map_or(usize::MAX, |rows| {
        usize::try_from(rows).unwrap_or(usize::MAX)
    });
    for record in reader.records().take(limit) {
        match record {
            Ok(record) => {
                let line = record.position().map_or(0, csv::Position::line);
                match request(&record, request_id(reading.key, line)) {
                    Ok(request) => {
                        let size = request.encoded_len();
                        if !requests.is_empty() && bytes + size > MAX_BATCH_BYTES {
                            if !hand_on(&mut lines, &mut requests, &mut bad) {
                                return Ok(());
                            }
                            bytes = 0;
                        }
                        bytes += size;
                        lines.push(line);
                        requests.push(request);
                    }
                    Err(reason) => bad.push((line, reason)),
                }
            }
            Err(error) if matches!(error.kind(), csv::ErrorKind::Io(_)) => {
                return Err(error).context("reading the file");
            }
            Err(error) => {
                let line = error.position().map_or(0, csv::Position::line);
                bad.push((line, unreadable(&error, reading.header)));
            }
        }
        if requests.len() >= reading.batch_size || bad.len() >= reading.batch_size {
            if !hand_on(&mut lines, &mut requests, &mut bad) {
                return Ok(());
            }
            bytes = 0;
        }
    }
    if !requests.is_empty() || !bad.is_empty() {
        hand_on(&mut lines, &mut requests, &mut bad);
    }
    Ok(())
}

/// The suite's clients, with the caller's token.
#[derive(Clone)]
struct Suite {
    url: String,
    authorization: AsciiMetadataValue,
    customers: CustomerServiceClient<Channel>,
    opportunities: OpportunityServiceClient<Channel>,
    statuses: StatusConfigServiceClient<Channel>,
}

impl Suite {
    /// Connects (one HTTP/2 connection that every batch in flight shares) and checks that
    /// the suite takes the token, so that a wrong one fails before the first row.
    async fn connect(url: &str, token: &Token) -> anyhow::Result<Suite> {
        let channel = Channel::from_shared(url.to_owned())
            .with_context(|| format!("invalid suite URL {url:?}"))?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("cannot connect to the suite at {url}"))?;
        let authorization = format!("Bearer {}", token.as_str())
            .parse()
            .context("the token is not a valid header value")?;
        let suite = Suite {
            url: url.to_owned(),
            authorization,
            customers: CustomerServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            opportunities: OpportunityServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            statuses: StatusConfigServiceClient::new(channel),
        };
        let mut statuses = suite.statuses.clone();
        statuses
            .list_statuses(suite.request(statusconfig::ListStatusesRequest {
                page_size: 1,
                ..Default::default()
            }))
            .await
            .map_err(|status| suite.refused(status))?;
        Ok(suite)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request.set_timeout(CALL_TIMEOUT);
        request
    }

    /// A failure that ends the import, explained.
    fn refused(&self, status: Status) -> anyhow::Error {
        let url = &self.url;
        let hint = match status.code() {
            Code::Unauthenticated => format!(
                "the suite at {url} refused the token: give --token (SALESOPP_TOKEN), or the \
                 suite's SALESOPP_AUTH_HS256_SECRET, SALESOPP_AUTH_ISSUER and \
                 SALESOPP_AUTH_AUDIENCE to mint one"
            ),
            Code::PermissionDenied => {
                format!("the suite at {url} does not let this caller write these rows")
            }
            Code::Unimplemented => {
                format!("the suite at {url} has no batch calls: it is older than this command")
            }
            code if transient(code) => format!(
                "the suite at {url} did not answer, after {} retries: run the same file again \
                 to resume",
                RETRY_DELAYS_MS.len()
            ),
            _ => format!("the suite at {url} refused the call"),
        };
        anyhow::Error::new(status).context(hint)
    }

    /// Every status that is not archived, by display name and by localized name.
    async fn statuses(&self, progress: &ProgressBar) -> Result<Named, Status> {
        let mut named = Named {
            noun: "status",
            by: "named",
            ..Default::default()
        };
        let mut names = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = retrying("listing the statuses", progress, || {
                let mut client = self.statuses.clone();
                let request = self.request(statusconfig::ListStatusesRequest {
                    page_size: PAGE_SIZE,
                    page_token: page_token.clone(),
                    show_archived: false,
                });
                async move { client.list_statuses(request).await }
            })
            .await?
            .into_inner();
            for status in page.statuses {
                // A display name wins over another status's localized name.
                named
                    .by_name
                    .insert(fold(&status.display_name), status.id.clone());
                names.push(status.display_name.clone());
                for localized in status.localized_names.values() {
                    named
                        .by_name
                        .entry(fold(localized))
                        .or_insert(status.id.clone());
                }
                named.ids.insert(status.id);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        named.hint = format!(" (the statuses: {})", names.join(", "));
        Ok(named)
    }

    /// Every customer's code, archived ones included (the suite then says why it cannot
    /// take an opportunity, rather than this saying the code is unknown).
    async fn customer_codes(&self, progress: &ProgressBar) -> Result<Named, Status> {
        let mut named = Named {
            noun: "customer",
            by: "with code",
            ..Default::default()
        };
        let mut page_token = String::new();
        loop {
            let page = retrying("listing the customers", progress, || {
                let mut client = self.customers.clone();
                let request = self.request(customer::ListCustomersRequest {
                    page_size: PAGE_SIZE,
                    page_token: page_token.clone(),
                    show_archived: true,
                    ..Default::default()
                });
                async move { client.list_customers(request).await }
            })
            .await?
            .into_inner();
            for customer in page.customers {
                if !customer.code.is_empty() {
                    named
                        .by_name
                        .insert(fold(&customer.code), customer.id.clone());
                }
                named.ids.insert(customer.id);
            }
            if page.next_page_token.is_empty() {
                return Ok(named);
            }
            page_token = page.next_page_token;
        }
    }

    /// One batch call with `allow_partial_success`: each row's result, in order.
    async fn create(&self, requests: &Requests) -> Result<Vec<Result<(), String>>, Status> {
        match requests {
            Requests::Customers(requests) => {
                let answer = self
                    .customers
                    .clone()
                    .batch_create_customers(self.request(customer::BatchCreateCustomersRequest {
                        requests: requests.clone(),
                        allow_partial_success: true,
                        request_id: String::new(),
                    }))
                    .await?
                    .into_inner();
                Ok(item_results(
                    requests.len(),
                    answer.customers.iter().map(|c| !c.id.is_empty()),
                    answer.errors,
                ))
            }
            Requests::Opportunities(requests) => {
                let answer = self
                    .opportunities
                    .clone()
                    .batch_create_opportunities(self.request(
                        opportunity::BatchCreateOpportunitiesRequest {
                            requests: requests.clone(),
                            allow_partial_success: true,
                            request_id: String::new(),
                        },
                    ))
                    .await?
                    .into_inner();
                Ok(item_results(
                    requests.len(),
                    answer.opportunities.iter().map(|o| !o.id.is_empty()),
                    answer.errors,
                ))
            }
        }
    }
}

/// Each of `len` items' result from a batch's answer: written when it came back with an id,
/// failed when `errors` lists it (or, should the answer be short, when nothing came back).
fn item_results(
    len: usize,
    written: impl Iterator<Item = bool>,
    errors: Vec<BatchItemError>,
) -> Vec<Result<(), String>> {
    let mut results = vec![Err("the suite answered nothing for this row".to_owned()); len];
    for (result, written) in results.iter_mut().zip(written) {
        if written {
            *result = Ok(());
        }
    }
    for error in errors {
        if let Ok(index) = usize::try_from(error.index)
            && index < len
        {
            results[index] = Err(item_reason(index, error.status));
        }
    }
    results
}

/// An item's error as a row's reason: its message without the `requests[i]` the suite
/// names it by (the summary names the line instead), and its code unless it is the usual
/// INVALID_ARGUMENT.
fn item_reason(index: usize, status: Option<tonic_types::pb::Status>) -> String {
    let Some(status) = status else {
        return "refused, with no reason given".to_owned();
    };
    let message = unprefixed(index, &status.message);
    match Code::from(status.code) {
        Code::InvalidArgument => message,
        code => format!("{message} ({code:?})"),
    }
}

fn unprefixed(index: usize, message: &str) -> String {
    message
        .replace(&format!("requests[{index}]."), "")
        .replace(&format!("requests[{index}]: "), "")
}

/// `reason` with each `requests[j]` it names (another row of the same batch, e.g. the one
/// whose code this row repeats) told as that row's line.
fn with_lines(reason: &str, lines: &[u64]) -> String {
    const ITEM: &str = "requests[";
    let mut told = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(at) = rest.find(ITEM) {
        told.push_str(&rest[..at]);
        let after = &rest[at + ITEM.len()..];
        let named = after.split_once(']').and_then(|(index, tail)| {
            let line = lines.get(index.parse::<usize>().ok()?)?;
            Some((line, tail))
        });
        match named {
            Some((line, tail)) => {
                told.push_str(&format!("the row on line {line}"));
                rest = tail;
            }
            None => {
                told.push_str(ITEM);
                rest = after;
            }
        }
    }
    told.push_str(rest);
    told
}

/// The items a whole batch was refused for, by position, with their reasons: the suite's
/// input check refuses a batch at once, naming `requests[i].field`. `None` when the
/// refusal names no item of the batch.
fn refused_items(status: &Status, len: usize) -> Option<BTreeMap<usize, String>> {
    if status.code() != Code::InvalidArgument {
        return None;
    }
    let mut refused: BTreeMap<usize, String> = BTreeMap::new();
    for violation in status.get_details_bad_request()?.field_violations {
        let index = violation
            .field
            .strip_prefix("requests[")
            .and_then(|rest| rest.split_once(']'))
            .and_then(|(index, _)| index.parse::<usize>().ok())
            .filter(|index| *index < len);
        if let Some(index) = index {
            let field = violation
                .field
                .strip_prefix(&format!("requests[{index}]"))
                .unwrap_or(&violation.field)
                .trim_start_matches('.');
            let reason = if field.is_empty() {
                violation.description
            } else {
                format!("{field}: {}", violation.description)
            };
            refused
                .entry(index)
                .and_modify(|reasons| {
                    reasons.push_str("; ");
                    reasons.push_str(&reason);
                })
                .or_insert(reason);
        }
    }
    (!refused.is_empty()).then_some(refused)
}

/// The failures worth trying again as they are: nothing was written, or what was is
/// replayed by the items' request ids. UNKNOWN is what tonic answers for a call whose
/// connection broke in flight (the suite restarting): the batch may have committed or not,
/// and only a retry tells.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Unknown
    )
}

/// `call` until it answers, or fails other than transiently, or [`RETRY_DELAYS_MS`] run
/// out; each retry is told on stderr.
async fn retrying<T, F, Fut>(what: &str, progress: &ProgressBar, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut delays = RETRY_DELAYS_MS.iter().map(|ms| Duration::from_millis(*ms));
    loop {
        // The call's own deadline travels with it; this one also covers a suite that
        // never answers at all.
        let status = match tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(5), call()).await
        {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(status)) => status,
            Err(_) => Status::deadline_exceeded(format!("no answer within {CALL_TIMEOUT:?}")),
        };
        match delays.next() {
            Some(delay) if transient(status.code()) => {
                progress.suspend(|| {
                    eprintln!(
                        "{what}: {:?}: {}; retrying in {delay:?}",
                        status.code(),
                        status.message()
                    );
                });
                tokio::time::sleep(delay).await;
            }
            _ => return Err(status),
        }
    }
}

/// What became of the rows of one batch.
#[derive(Debug, Default)]
struct Outcome {
    written: u64,
    failed: Vec<(u64, String)>,
}

/// Sends one batch, retrying it while the suite fails transiently. The rows the suite's
/// input check refuses fail alone and the rest are sent again; a refusal that dooms every
/// batch (the token, the caller's rights, the suite gone) ends the import.
async fn send(suite: Suite, mut batch: Batch, progress: ProgressBar) -> anyhow::Result<Outcome> {
    let rows = batch.len() as u64;
    let mut outcome = Outcome::default();
    while !batch.is_empty() {
        let what = batch.describe();
        match retrying(&what, &progress, || suite.create(&batch.requests)).await {
            Ok(results) => {
                for (line, result) in batch.lines.iter().zip(results) {
                    match result {
                        Ok(()) => outcome.written += 1,
                        Err(reason) => {
                            outcome
                                .failed
                                .push((*line, with_lines(&reason, &batch.lines)));
                        }
                    }
                }
                break;
            }
            Err(status) => match refused_items(&status, batch.len()) {
                Some(refused) => {
                    for (index, reason) in &refused {
                        let reason = with_lines(reason, &batch.lines);
                        outcome.failed.push((batch.lines[*index], reason));
                    }
                    batch.retain(|index| !refused.contains_key(&index));
                }
                None if transient(status.code())
                    || matches!(
                        status.code(),
                        Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented
                    ) =>
                {
                    return Err(suite.refused(status));
                }
                None => {
                    let reason = format!(
                        "its batch was refused: {} ({:?})",
                        status.message(),
                        status.code()
                    );
                    outcome
                        .failed
                        .extend(batch.lines.iter().map(|line| (*line, reason.clone())));
                    break;
                }
            },
        }
    }
    progress.inc(rows);
    Ok(outcome)
}

/// What the import needs of the suite before the first row: the connection (`None` in a
/// dry run) and the look-ups the file's columns call for.
struct Prepared {
    suite: Option<Suite>,
    lookups: Lookups,
    unresolved: Option<String>,
}

async fn prepare(
    options: &ImportOptions,
    columns: &Columns,
    progress: &ProgressBar,
) -> anyhow::Result<Prepared> {
    if !options.dry_run {
        let token = options.token.as_ref().context(
            "a token is required: give --token (SALESOPP_TOKEN) or the suite's \
             SALESOPP_AUTH_HS256_SECRET",
        )?;
        let suite = Suite::connect(&options.url, token).await?;
        let lookups = Lookups::load(&suite, columns, progress).await?;
        return Ok(Prepared {
            suite: Some(suite),
            lookups,
            unresolved: None,
        });
    }
    // A dry run asks the suite only for the names it resolves, and checks without them when
    // it cannot.
    let looked_up = match &options.token {
        _ if !Lookups::wanted(columns) => Ok(Lookups::default()),
        None => Err(anyhow::anyhow!("no token to call the suite with")),
        Some(token) => match Suite::connect(&options.url, token).await {
            Ok(suite) => Lookups::load(&suite, columns, progress).await,
            Err(error) => Err(error),
        },
    };
    let (lookups, unresolved) = match looked_up {
        Ok(lookups) => (lookups, None),
        Err(error) => (Lookups::default(), Some(format!("{error:#}"))),
    };
    Ok(Prepared {
        suite: None,
        lookups,
        unresolved,
    })
}

fn progress_bar(shown: bool, total: u64) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    // Hidden by indicatif itself when stderr is not a terminal.
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} rows, {rate}, ETA {eta}",
    )
    .map(|style| {
        style.with_key("rate", |state: &ProgressState, out: &mut dyn fmt::Write| {
            let _ = write!(out, "{:.0} rows/s", state.per_sec());
        })
    })
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// The counts so far.
#[derive(Debug, Default)]
struct Tally {
    read: u64,
    valid: u64,
    written: u64,
    failed: Vec<(u64, String)>,
}

impl Tally {
    fn absorb(
        &mut self,
        done: Result<anyhow::Result<Outcome>, tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        let outcome = done.context("a batch's task failed")??;
        self.written += outcome.written;
        self.failed.extend(outcome.failed);
        Ok(())
    }
}

/// Imports the file `options` names into the suite (or, with `dry_run`, only checks it)
/// and says how it went. An error means the import could not go on (no file, a bad header,
/// the suite unreachable or refusing the caller); a row that fails is in the summary.
pub async fn run(options: ImportOptions) -> anyhow::Result<Summary> {
    let started = Instant::now();
    options.check()?;
    let file = options.file.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        scan(open(&file)?).with_context(|| file.display().to_string())
    })
    .await
    .context("the file's first pass failed")??;
    let columns = Columns::from_header(options.kind, scanned.header.iter().map(String::as_str))
        .map_err(anyhow::Error::msg)
        .with_context(|| options.file.display().to_string())?;
    let key = options.key.clone().unwrap_or_else(|| scanned.key.clone());
    let total = options
        .stop_after_rows
        .map_or(scanned.rows, |limit| limit.min(scanned.rows));
    let progress = progress_bar(options.progress, total);
    let Prepared {
        suite,
        lookups,
        unresolved,
    } = prepare(&options, &columns, &progress).await?;

    let (chunks, mut incoming) = mpsc::channel::<Chunk>(options.concurrency);
    let reader = {
        let (kind, path, header, key) = (
            options.kind,
            options.file.clone(),
            scanned.header.clone(),
            key.clone(),
        );
        let (batch_size, stop_after_rows) = (options.batch_size, options.stop_after_rows);
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let reading = Reading {
                header: &header,
                key: &key,
                batch_size,
                stop_after_rows,
            };
            let source = open(&path)?;
            match kind {
                Kind::Customers => read_rows(
                    source,
                    &reading,
                    |record, id| customer_request(&columns, record, id),
                    Requests::Customers,
                    &chunks,
                ),
                Kind::Opportunities => read_rows(
                    source,
                    &reading,
                    |record, id| opportunity_request(&columns, &lookups, record, id),
                    Requests::Opportunities,
                    &chunks,
                ),
            }
        })
    };

    let mut tally = Tally::default();
    let mut in_flight = JoinSet::new();
    let mut stopped: Option<anyhow::Error> = None;
    while let Some(Chunk { batch, bad }) = incoming.recv().await {
        tally.read += (batch.len() + bad.len()) as u64;
        tally.valid += batch.len() as u64;
        progress.inc(bad.len() as u64);
        tally.failed.extend(bad);
        let Some(suite) = &suite else {
            // A dry run: the rows are checked, nothing is sent.
            progress.inc(batch.len() as u64);
            continue;
        };
        if batch.is_empty() {
            continue;
        }
        if in_flight.len() >= options.concurrency
            && let Some(done) = in_flight.join_next().await
            && let Err(error) = tally.absorb(done)
        {
            stopped = Some(error);
            break;
        }
        in_flight.spawn(send(suite.clone(), batch, progress.clone()));
    }
    // No more batches once one has stopped the import; those in flight finish.
    drop(incoming);
    while let Some(done) = in_flight.join_next().await {
        if let Err(error) = tally.absorb(done) {
            stopped.get_or_insert(error);
        }
    }
    let read = reader.await.context("the file's second pass failed")?;
    progress.finish_and_clear();
    if let Some(error) = stopped {
        return Err(error.context(format!(
            "the import stopped after writing {} rows: run it again to resume",
            tally.written
        )));
    }
    read.with_context(|| options.file.display().to_string())?;
    tally.failed.sort_by_key(|(line, _)| *line);
    Ok(Summary {
        kind: options.kind,
        file: options.file,
        key,
        dry_run: options.dry_run,
        read: tally.read,
        valid: tally.valid,
        written: tally.written,
        failed: tally.failed,
        unread: scanned.rows.saturating_sub(tally.read),
        unresolved,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_units_and_nanos() {
        assert_eq!(parse_amount("1234.5"), Ok((1234, 500_000_000)));
        assert_eq!(parse_amount("125000.50"), Ok((125_000, 500_000_000)));
        assert_eq!(parse_amount("0.000000001"), Ok((0, 1)));
        assert_eq!(parse_amount("0.999999999"), Ok((0, 999_999_999)));
        assert_eq!(parse_amount(" 42 "), Ok((42, 0)));
        assert_eq!(parse_amount("1,250,000.25"), Ok((1_250_000, 250_000_000)));
        assert_eq!(
            parse_amount("9223372036854775807"),
            Ok((i64::MAX, 0)),
            "the largest units"
        );
    }

    #[test]
    fn amounts_that_are_not_plain_decimals_are_refused() {
        for bad in [
            "-1",
            "-0.5",
            "1.0000000001",
            "1e5",
            "1.",
            ".5",
            "",
            "12,34",
            "1234,567",
            "1,2345",
            "+5",
            "1.2.3",
            "๑๒๓",
            "9223372036854775808",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_amount("-1").unwrap_err().contains("negative"));
        assert!(
            parse_amount("1.0000000001")
                .unwrap_err()
                .contains("9 decimals")
        );
    }

    #[test]
    fn dates_are_calendar_dates() {
        assert_eq!(
            parse_date("2026-12-31"),
            Ok(Date {
                year: 2026,
                month: 12,
                day: 31
            })
        );
        assert!(parse_date("2024-02-29").is_ok(), "a leap day");
        assert!(
            parse_date("2000-02-29").is_ok(),
            "400 years make a leap year"
        );
        for bad in [
            "2025-02-29",
            "1900-02-29",
            "2026-04-31",
            "2026-13-01",
            "2026-00-10",
            "0000-01-01",
            "2026-1-5",
            "31/12/2026",
            "2026-12-31T00:00",
            "2026-12-3x",
        ] {
            assert!(parse_date(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn currency_defaults_to_baht_and_is_upper_cased() {
        assert_eq!(parse_currency(""), Ok("THB".to_owned()));
        assert_eq!(parse_currency(" usd "), Ok("USD".to_owned()));
        assert!(parse_currency("บาท").is_err());
        assert!(parse_currency("THBX").is_err());
    }

    #[test]
    fn request_ids_are_the_file_hash_and_the_line() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(file_key(b"abc"), "ba7816bf8f01cfea");
        assert_eq!(
            request_id(&file_key(b"abc"), 17),
            "import:ba7816bf8f01cfea:17"
        );
        assert_ne!(file_key(b"abc"), file_key(b"abd"));
        // The streaming hash of the first pass is the same as the hash of the bytes.
        let csv = "code,display_name\nA-1,บริษัท หนึ่ง\n";
        assert_eq!(scan(csv.as_bytes()).unwrap().key, file_key(csv.as_bytes()));
    }

    #[test]
    fn headers_are_checked_against_the_kind() {
        let columns =
            Columns::from_header(Kind::Customers, ["\u{feff}Code", " display_name ", "PHONE"])
                .unwrap();
        assert!(columns.has("code") && columns.has("display_name") && columns.has("phone"));

        let unknown = Columns::from_header(Kind::Customers, ["display_name", "fax"]).unwrap_err();
        assert!(unknown.contains("unknown columns \"fax\""), "{unknown}");
        assert!(
            unknown.contains(
                "code, display_name, email, phone, contact_name, tax_id, address, owner_id"
            ),
            "the allowed names are listed: {unknown}"
        );

        let repeated =
            Columns::from_header(Kind::Customers, ["display_name", "Display_Name"]).unwrap_err();
        assert!(
            repeated.contains("repeated columns display_name"),
            "{repeated}"
        );

        let missing = Columns::from_header(Kind::Customers, ["code"]).unwrap_err();
        assert!(missing.contains("no display_name column"), "{missing}");

        let missing = Columns::from_header(Kind::Opportunities, ["title", "amount"]).unwrap_err();
        assert!(
            missing.contains("no customer_id or customer_code column"),
            "{missing}"
        );
        assert!(Columns::from_header(Kind::Opportunities, ["customer_code", "title"]).is_ok());

        let empty = Columns::from_header(Kind::Customers, []).unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
    }

    /// The chunks the second pass hands on for `csv`, all of them.
    fn chunks_of(csv: &str, kind: Kind, lookups: &Lookups, batch_size: usize) -> Vec<Chunk> {
        let scanned = scan(csv.as_bytes()).unwrap();
        let columns =
            Columns::from_header(kind, scanned.header.iter().map(String::as_str)).unwrap();
        let reading = Reading {
            header: &scanned.header,
            key: &scanned.key,
            batch_size,
            stop_after_rows: None,
        };
        let (chunks, mut incoming) = mpsc::channel(1000);
        match kind {
            Kind::Customers => read_rows(
                csv.as_bytes(),
                &reading,
                |record, id| customer_request(&columns, record, id),
                Requests::Customers,
                &chunks,
            ),
            Kind::Opportunities => read_rows(
                csv.as_bytes(),
                &reading,
                |record, id| opportunity_request(&columns, lookups, record, id),
                Requests::Opportunities,
                &chunks,
            ),
        }
        .unwrap();
        drop(chunks);
        std::iter::from_fn(|| incoming.try_recv().ok()).collect()
    }

    #[test]
    fn rows_keep_their_thai_text_and_start_lines() {
        let csv = "\u{feff}code,display_name,phone,address\n\
                   C-1,บริษัท สยามพาณิชย์ จำกัด,081-234-5678,\"99 ถนนสุขุมวิท\nกรุงเทพฯ 10110\"\n\
                   C-2,,+66 81 234 5678,\n\
                   C-3,ร้านค้า ชัยมงคล,+66 81 234 5678,\n\
                   C 4,ห้าง,02-123-4567\n";
        let scanned = scan(csv.as_bytes()).unwrap();
        assert_eq!(scanned.rows, 4);
        let chunks = chunks_of(csv, Kind::Customers, &Lookups::default(), 1000);
        assert_eq!(chunks.len(), 1);
        let Chunk { batch, bad } = &chunks[0];
        // The first row spans lines 2 and 3: the next one starts on line 4.
        assert_eq!(batch.lines, [2, 5]);
        let Requests::Customers(requests) = &batch.requests else {
            panic!("customers expected");
        };
        let first = requests[0].customer.as_ref().unwrap();
        assert_eq!(first.display_name, "บริษัท สยามพาณิชย์ จำกัด");
        assert_eq!(first.phone, "081-234-5678", "phones pass as they are");
        assert_eq!(first.address, "99 ถนนสุขุมวิท\nกรุงเทพฯ 10110");
        assert_eq!(requests[0].request_id, format!("import:{}:2", scanned.key));
        assert_eq!(
            requests[1].customer.as_ref().unwrap().phone,
            "+66 81 234 5678"
        );
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!(bad[0].0, 4);
        assert!(bad[0].1.contains("display_name is required"), "{bad:?}");
        assert_eq!(bad[1].0, 6);
        assert!(
            bad[1].1.contains("3 fields, where the header has 4"),
            "{bad:?}"
        );
    }

    #[test]
    fn batches_hold_at_most_batch_size_rows() {
        let mut csv = "display_name\n".to_owned();
        for n in 0..25 {
            csv.push_str(&format!("ลูกค้า {n}\n"));
        }
        let sizes: Vec<usize> = chunks_of(&csv, Kind::Customers, &Lookups::default(), 10)
            .iter()
            .map(|chunk| chunk.batch.len())
            .collect();
        assert_eq!(sizes, [10, 10, 5]);
    }

    fn lookups() -> Lookups {
        let statuses = Named {
            noun: "status",
            by: "named",
            by_name: HashMap::from([
                ("new".to_owned(), "s-new".to_owned()),
                ("ใหม่".to_owned(), "s-new".to_owned()),
                ("closed won".to_owned(), "s-won".to_owned()),
            ]),
            ids: HashSet::from(["s-new".to_owned(), "s-won".to_owned()]),
            hint: " (the statuses: New, Closed won)".to_owned(),
        };
        let customers = Named {
            noun: "customer",
            by: "with code",
            by_name: HashMap::from([("siam-1".to_owned(), "c-1".to_owned())]),
            ids: HashSet::from(["c-1".to_owned(), "c-2".to_owned()]),
            hint: String::new(),
        };
        Lookups {
            statuses: Some(statuses),
            customers: Some(customers),
        }
    }

    #[test]
    fn opportunity_rows_resolve_codes_and_status_names() {
        let csv = "customer_code,customer_id,title,amount,currency_code,expected_close_date,status,note\n\
                   SIAM-1,,ระบบ ERP,\"1,250,000.50\",,2026-12-31,CLOSED WON,ปิดการขาย\n\
                   ,c-2,Support,100,usd,,ใหม่,\n\
                   nope,,Lost one,-5,,2026-02-30,ไม่มีสถานะนี้,\n\
                   SIAM-1,c-2,Mismatch,,,,,\n";
        let chunks = chunks_of(csv, Kind::Opportunities, &lookups(), 1000);
        let Chunk { batch, bad } = &chunks[0];
        let Requests::Opportunities(requests) = &batch.requests else {
            panic!("opportunities expected");
        };
        assert_eq!(batch.lines, [2, 3]);
        let first = requests[0].opportunity.as_ref().unwrap();
        assert_eq!(first.customer_id, "c-1");
        assert_eq!(first.status_id, "s-won");
        assert_eq!(first.title, "ระบบ ERP");
        assert_eq!(
            first.amount,
            Some(Money {
                currency_code: "THB".to_owned(),
                units: 1_250_000,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            first.expected_close_date,
            Some(Date {
                year: 2026,
                month: 12,
                day: 31
            })
        );
        assert_eq!(requests[0].note, "ปิดการขาย");
        let second = requests[1].opportunity.as_ref().unwrap();
        assert_eq!(second.customer_id, "c-2");
        assert_eq!(second.status_id, "s-new", "a localized name resolves too");
        assert_eq!(second.amount.as_ref().unwrap().currency_code, "USD");

        assert_eq!(
            bad.iter().map(|(line, _)| *line).collect::<Vec<_>>(),
            [4, 5]
        );
        let reasons = &bad[0].1;
        for expected in [
            "customer_code: no customer with code \"nope\"",
            // Thai as it is, not escaped.
            "status: no status named \"ไม่มีสถานะนี้\" (the statuses: New, Closed won)",
            "amount: \"-5\" is negative",
            "expected_close_date: \"2026-02-30\" is not a calendar date",
        ] {
            assert!(reasons.contains(expected), "{expected:?} in {reasons:?}");
        }
        assert!(
            bad[1]
                .1
                .contains("is the customer c-1, not customer_id c-2"),
            "{bad:?}"
        );
    }

    #[test]
    fn without_lookups_names_are_left_to_the_suite() {
        let csv = "customer_id,title,status_id\nc-9,T,s-9\n";
        let chunks = chunks_of(csv, Kind::Opportunities, &Lookups::default(), 1000);
        assert!(chunks[0].bad.is_empty());
        assert_eq!(chunks[0].batch.lines, [2]);
    }

    #[test]
    fn text_the_suite_cannot_hold_is_a_bad_row_named_by_field() {
        let csv = "display_name,address\nok,\"a\u{0}b\"\n";
        let chunks = chunks_of(csv, Kind::Customers, &Lookups::default(), 1000);
        assert_eq!(chunks[0].bad.len(), 1);
        assert!(
            chunks[0].bad[0].1.starts_with("customer.address: "),
            "{:?}",
            chunks[0].bad
        );
    }

    #[test]
    fn item_errors_name_the_row_not_its_position() {
        let errors = vec![
            BatchItemError {
                index: 1,
                status: Some(tonic_types::pb::Status {
                    code: Code::InvalidArgument as i32,
                    message: "requests[1].customer.phone: not a valid phone number".to_owned(),
                    details: Vec::new(),
                }),
            },
            BatchItemError {
                index: 2,
                status: Some(tonic_types::pb::Status {
                    code: Code::AlreadyExists as i32,
                    message: "requests[2]: customer code \"C-1\" is taken".to_owned(),
                    details: Vec::new(),
                }),
            },
        ];
        let results = item_results(4, [true, false, false, true].into_iter(), errors);
        assert_eq!(results[0], Ok(()));
        assert_eq!(
            results[1],
            Err("customer.phone: not a valid phone number".to_owned())
        );
        assert_eq!(
            results[2],
            Err("customer code \"C-1\" is taken (AlreadyExists)".to_owned())
        );
        assert_eq!(results[3], Ok(()));
        let short = item_results(2, [true].into_iter(), Vec::new());
        assert!(
            short[1].is_err(),
            "a row the answer leaves out is not written"
        );
    }

    #[test]
    fn other_rows_of_the_batch_are_named_by_their_lines() {
        let lines = [2, 5, 9];
        assert_eq!(
            with_lines("requests[0] has the same code (AlreadyExists)", &lines),
            "the row on line 2 has the same code (AlreadyExists)"
        );
        assert_eq!(
            with_lines("as requests[2] and requests[1]: x", &lines),
            "as the row on line 9 and the row on line 5: x"
        );
        assert_eq!(
            with_lines("requests[7] and requests[", &lines),
            "requests[7] and requests["
        );
        assert_eq!(with_lines("สถานะ requests[x]", &lines), "สถานะ requests[x]");
    }

    #[test]
    fn a_batch_refused_for_some_items_names_them() {
        let details = tonic_types::ErrorDetails::with_bad_request(vec![
            tonic_types::FieldViolation::new("requests[3].customer.address", "must be shorter"),
            tonic_types::FieldViolation::new("requests[3].customer.contact_name", "no NUL"),
            tonic_types::FieldViolation::new("requests[7].customer.email", "out of range"),
            tonic_types::FieldViolation::new("", "and 2 more violations, not listed"),
        ]);
        let status = Status::with_error_details(Code::InvalidArgument, "bad", details);
        let refused = refused_items(&status, 5).unwrap();
        assert_eq!(
            refused.len(),
            1,
            "index 7 is not in a batch of 5: {refused:?}"
        );
        assert_eq!(
            refused[&3],
            "customer.address: must be shorter; customer.contact_name: no NUL"
        );
        assert!(refused_items(&Status::invalid_argument("bad"), 5).is_none());
        assert!(refused_items(&Status::unavailable("down"), 5).is_none());
    }

    #[test]
    fn a_batch_keeps_lines_and_requests_together() {
        let mut batch = Batch {
            lines: vec![2, 3, 4, 5],
            requests: Requests::Customers(
                ["a", "b", "c", "d"]
                    .iter()
                    .map(|id| customer::CreateCustomerRequest {
                        request_id: (*id).to_owned(),
                        ..Default::default()
                    })
                    .collect(),
            ),
        };
        batch.retain(|index| index % 2 == 1);
        assert_eq!(batch.lines, [3, 5]);
        let Requests::Customers(requests) = &batch.requests else {
            panic!("customers expected");
        };
        let ids: Vec<&str> = requests.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["b", "d"]);
    }
}
