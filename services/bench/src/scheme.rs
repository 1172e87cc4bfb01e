//! The shape of the benchmark's data, as pure functions of a scale and a row number: who the
//! salespeople are, what each customer and opportunity looks like, and the status path each
//! opportunity took. Nothing here reads a clock or a random generator, so the seeder, the
//! workloads and the pgbench scripts agree on every id without sharing any state: opportunity
//! `i` is `md5('opportunity-' || i)::uuid` in Rust and in SQL alike.

use md5::{Digest as _, Md5};
use uuid::Uuid;

/// Salespeople, in [`TEAMS`] teams of equal size; the first of each team is its manager.
pub const SALESPEOPLE: u32 = 200;
/// Teams of salespeople.
pub const TEAMS: u32 = 10;
/// The one sales admin (sees everything; the pipeline-admin workload).
pub const ADMIN_ID: &str = "bench-admin";
pub const ADMIN_NAME: &str = "Bench Admin";

/// Words a customer search looks for, each in a known share of the customers: "สยาม" in 1
/// of 37 Thai names, "acme" in 1 of 41 Latin ones (both about 1.3% of all customers).
pub const SEARCH_TERMS: [&str; 4] = ["สยาม", "acme", "เจริญ", "pacific"];

const THAI_GIVEN: [&str; 10] = [
    "สมชาย",
    "สมศรี",
    "วิชัย",
    "มาลี",
    "ประยุทธ",
    "สุดา",
    "อำนาจ",
    "นภา",
    "ธนา",
    "กานดา",
];
const THAI_FAMILY: [&str; 7] = ["ใจดี", "รักไทย", "ศรีสุข", "มั่นคง", "ทองดี", "แก้วมณี", "บุญมา"];
const LATIN_GIVEN: [&str; 10] = [
    "John", "Mary", "Peter", "Linda", "David", "Susan", "Tom", "Anna", "Chris", "Kate",
];
const LATIN_FAMILY: [&str; 7] = [
    "Smith", "Brown", "Wong", "Garcia", "Miller", "Tanaka", "Siam",
];
const THAI_COMPANY: [&str; 37] = [
    "สยาม",
    "ไทย",
    "รุ่งเรือง",
    "เจริญ",
    "กรุงเทพ",
    "ศรี",
    "มั่นคง",
    "พัฒนา",
    "ก้าวหน้า",
    "สุข",
    "ทอง",
    "เพชร",
    "ชัย",
    "วัฒนา",
    "ประเสริฐ",
    "บูรพา",
    "อุดม",
    "มงคล",
    "สมบูรณ์",
    "นคร",
    "ล้านนา",
    "อีสาน",
    "ทักษิณ",
    "ภูเก็ต",
    "เชียงใหม่",
    "ขอนแก่น",
    "โคราช",
    "ชลบุรี",
    "ระยอง",
    "อยุธยา",
    "สุโขทัย",
    "พาณิชย์",
    "ค้าไม้",
    "ก่อสร้าง",
    "อาหาร",
    "เกษตร",
    "ขนส่ง",
];
const THAI_TRADE: [&str; 8] = [
    "การค้า",
    "อุตสาหกรรม",
    "วิศวกรรม",
    "เทรดดิ้ง",
    "ซัพพลาย",
    "โฮลดิ้ง",
    "ฟู้ดส์",
    "เทคโนโลยี",
];
const LATIN_COMPANY: [&str; 41] = [
    "Acme", "Global", "Pacific", "Golden", "Royal", "Star", "Prime", "United", "Eastern",
    "Northern", "Southern", "Western", "Central", "Metro", "Bright", "Silver", "Blue", "Green",
    "Red", "Alpha", "Omega", "Delta", "Summit", "Pioneer", "Orchid", "Lotus", "Tiger", "Elephant",
    "Dragon", "Phoenix", "Harbor", "River", "Mountain", "Ocean", "Sun", "Moon", "Apex", "Vertex",
    "Nova", "Zenith", "Crown",
];
const LATIN_TRADE: [&str; 8] = [
    "Trading",
    "Industries",
    "Engineering",
    "Supply",
    "Foods",
    "Logistics",
    "Holdings",
    "Systems",
];
const THAI_TITLES: [&str; 6] = [
    "ระบบ ERP",
    "เครื่องจักรแพ็คกิ้ง",
    "ซอฟต์แวร์บัญชี",
    "สัญญาบำรุงรักษา",
    "โครงการโซลาร์รูฟ",
    "ระบบกล้องวงจรปิด",
];
const LATIN_TITLES: [&str; 6] = [
    "ERP rollout",
    "Packaging machine",
    "Accounting software",
    "Maintenance contract",
    "Solar rooftop",
    "Cloud migration",
];

/// One salesperson of the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salesperson {
    pub id: String,
    pub name: String,
    pub team: String,
    pub manager: bool,
}

impl Salesperson {
    pub fn role(&self) -> &'static str {
        if self.manager {
            "sales_manager"
        } else {
            "sales_rep"
        }
    }
}

/// Salesperson `k`, 1..=[`SALESPEOPLE`]: `sp-001`..`sp-200`, Thai names for even `k`, English
/// for odd, team `team-01`..`team-10` by blocks, the first of each block its manager.
pub fn salesperson(k: u32) -> Salesperson {
    let per_team = SALESPEOPLE / TEAMS;
    let index = (k - 1) as usize;
    let name = if k.is_multiple_of(2) {
        format!(
            "{} {}",
            THAI_GIVEN[index % THAI_GIVEN.len()],
            THAI_FAMILY[index % THAI_FAMILY.len()]
        )
    } else {
        format!(
            "{} {}",
            LATIN_GIVEN[index % LATIN_GIVEN.len()],
            LATIN_FAMILY[index % LATIN_FAMILY.len()]
        )
    };
    Salesperson {
        id: format!("sp-{k:03}"),
        name,
        team: format!("team-{:02}", 1 + (k - 1) / per_team),
        manager: (k - 1).is_multiple_of(per_team),
    }
}

/// Every salesperson, `sp-001` first.
pub fn salespeople() -> Vec<Salesperson> {
    (1..=SALESPEOPLE).map(salesperson).collect()
}

/// The manager of team `t` (1..=[`TEAMS`]).
pub fn manager_of_team(t: u32) -> Salesperson {
    salesperson((t - 1) * (SALESPEOPLE / TEAMS) + 1)
}

/// The sales reps (not managers), in id order: the callers of the per-caller workloads.
pub fn reps() -> Vec<Salesperson> {
    salespeople().into_iter().filter(|s| !s.manager).collect()
}

/// The customers a scale gets when not told: one per ten opportunities, at least ten.
pub fn customers_for(scale: u64) -> u64 {
    (scale / 10).max(10)
}

fn md5_uuid(text: &str) -> Uuid {
    let digest: [u8; 16] = Md5::digest(text.as_bytes()).into();
    Uuid::from_bytes(digest)
}

/// Opportunity `i` (1-based): `md5('opportunity-' || i)::uuid`, random-looking like the
/// suite's own v4 ids, so the primary key is read the way production reads it.
pub fn opportunity_id(i: u64) -> Uuid {
    md5_uuid(&format!("opportunity-{i}"))
}

/// Customer `i` (1-based): `md5('customer-' || i)::uuid`.
pub fn customer_id(i: u64) -> Uuid {
    md5_uuid(&format!("customer-{i}"))
}

/// A 64-bit mix of `(i, salt)` (splitmix64's finalizer): the seed's only source of variety.
pub fn mix(i: u64, salt: u64) -> u64 {
    let mut z = i
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(salt.wrapping_mul(0xd1b5_4a32_d192_ed03));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A status as the seed and the workloads use it (read from the database, pipeline order).
#[derive(Debug, Clone)]
pub struct Status {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub probability: i16,
    pub position: i32,
}

impl Status {
    pub fn is_open(&self) -> bool {
        self.kind == "OPEN"
    }
}

/// The status a change workload moves an opportunity in `from` to: the next OPEN status in
/// pipeline order, wrapping around; a closed opportunity reopens in the first OPEN one. Never
/// `from` itself (a change to the same status records nothing, R8), so every call is a write.
/// The pgbench scripts compute the same rule in SQL ([`crate::pgbench`]).
pub fn next_status(statuses: &[Status], from: Uuid) -> &Status {
    let open: Vec<&Status> = statuses.iter().filter(|s| s.is_open()).collect();
    let at = open.iter().position(|s| s.id == from);
    match at {
        Some(at) => open[(at + 1) % open.len()],
        None => open[0],
    }
}

/// One customer row.
#[derive(Debug, Clone)]
pub struct CustomerSeed {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub contact: String,
    pub owner: u32,
    /// Seconds after the seed's epoch.
    pub create_offset: i64,
}

/// Customer `i` (1-based): half Thai company names, half English, with the search terms at
/// the rates [`SEARCH_TERMS`] says.
pub fn customer(i: u64) -> CustomerSeed {
    let half = (i / 2) as usize;
    let name = if i.is_multiple_of(2) {
        format!(
            "บริษัท {}{} จำกัด",
            THAI_COMPANY[half % THAI_COMPANY.len()],
            THAI_TRADE[(i as usize / 74) % THAI_TRADE.len()]
        )
    } else {
        format!(
            "{} {} Co., Ltd.",
            LATIN_COMPANY[half % LATIN_COMPANY.len()],
            LATIN_TRADE[(i as usize / 82) % LATIN_TRADE.len()]
        )
    };
    let contact = if i.is_multiple_of(2) {
        format!("คุณ{}", THAI_GIVEN[(i % 10) as usize])
    } else {
        format!(
            "{} {}",
            LATIN_GIVEN[(i % 10) as usize],
            LATIN_FAMILY[(i % 7) as usize]
        )
    };
    CustomerSeed {
        id: customer_id(i),
        code: format!("C{i:07}"),
        name,
        email: (!i.is_multiple_of(4)).then(|| format!("sales{i}@example{}.co.th", i % 50)),
        phone: (!i.is_multiple_of(3))
            .then(|| format!("+66{}", 800_000_000 + (i * 7919) % 100_000_000)),
        contact,
        owner: 1 + (mix(i, 11) % u64::from(SALESPEOPLE)) as u32,
        create_offset: (i % (700 * 86_400)) as i64,
    }
}

/// One opportunity and the status path it took to where it is.
#[derive(Debug, Clone)]
pub struct OpportunitySeed {
    pub i: u64,
    pub id: Uuid,
    pub customer: u64,
    pub owner: u32,
    pub title: String,
    pub currency: &'static str,
    /// Satang/cents: the amount times 100. Every seeded opportunity has an amount.
    pub amount_cents: u64,
    /// Days from the seed's epoch; `None` for an unknown close date (5%).
    pub close_day: Option<i64>,
    pub next_step: Option<&'static str>,
    /// Indexes into the statuses, first entry first; the last is where it is now.
    pub path: Vec<usize>,
    /// Seconds after the seed's epoch of each entry of `path`.
    pub times: Vec<i64>,
}

impl OpportunitySeed {
    pub fn current(&self) -> usize {
        self.path[self.path.len() - 1]
    }

    pub fn create_offset(&self) -> i64 {
        self.times[0]
    }

    /// The time of its last change (status_change_time and update_time).
    pub fn last_offset(&self) -> i64 {
        self.times[self.times.len() - 1]
    }
}

/// Where opportunity `i`'s status ends, by pipeline position (1-based), in the shares of a
/// real pipeline: Interested 20%, Presented 15%, Sent email 12%, Quotation 10%, Considering
/// 10%, Closed won 15%, Closed lost 18%.
fn final_position(i: u64) -> i32 {
    match mix(i, 3) % 100 {
        0..20 => 1,
        20..35 => 2,
        35..47 => 3,
        47..57 => 4,
        57..67 => 5,
        67..82 => 6,
        _ => 7,
    }
}

/// Opportunity `i` (1-based) over `customers` customers and `statuses` (pipeline order).
/// It has 1 to 7 history entries (4 on average): the first at creation, each later one a move
/// between distinct statuses (R8), OPEN ones until the last, which is where it is now.
pub fn opportunity(i: u64, customers: u64, statuses: &[Status]) -> OpportunitySeed {
    let owner = 1 + (mix(i, 1) % u64::from(SALESPEOPLE)) as u32;
    let customer = 1 + mix(i, 2) % customers;
    let position = final_position(i);
    let last = statuses
        .iter()
        .position(|s| s.position == position)
        .unwrap_or(statuses.len() - 1);
    let open: Vec<usize> = (0..statuses.len())
        .filter(|&s| statuses[s].is_open())
        .collect();
    let entries = 1 + (mix(i, 4) % 7) as usize;
    // Built backwards from where it is: each earlier status differs from the one after it.
    let mut path = vec![last];
    for step in 1..entries {
        let next = path[path.len() - 1];
        let choices: Vec<usize> = open.iter().copied().filter(|&s| s != next).collect();
        path.push(choices[(mix(i, 100 + step as u64) % choices.len() as u64) as usize]);
    }
    path.reverse();
    let mut time = (mix(i, 5) % (700 * 86_400)) as i64;
    let mut times = Vec::with_capacity(entries);
    for step in 0..entries {
        if step > 0 {
            // An hour to ten days in each status.
            time += 3_600 + (mix(i, 200 + step as u64) % (10 * 86_400)) as i64;
        }
        times.push(time);
    }
    let title = if i.is_multiple_of(2) {
        format!(
            "{} เฟส {}",
            THAI_TITLES[(i / 2 % 6) as usize],
            1 + mix(i, 6) % 5
        )
    } else {
        format!(
            "{} phase {}",
            LATIN_TITLES[(i / 2 % 6) as usize],
            1 + mix(i, 6) % 5
        )
    };
    let currency = match mix(i, 7) % 10 {
        0..7 => "THB",
        7..9 => "USD",
        _ => "EUR",
    };
    OpportunitySeed {
        i,
        id: opportunity_id(i),
        customer,
        owner,
        title,
        currency,
        amount_cents: 100_000 + mix(i, 8) % 500_000_000,
        close_day: (i % 20 != 7).then(|| 365 + (mix(i, 9) % 730) as i64),
        next_step: match i % 3 {
            0 => None,
            1 => Some("โทรติดตามลูกค้า"),
            _ => Some("Send the revised quotation"),
        },
        path,
        times,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses() -> Vec<Status> {
        let kinds = ["OPEN", "OPEN", "OPEN", "OPEN", "OPEN", "WON", "LOST"];
        kinds
            .iter()
            .enumerate()
            .map(|(n, kind)| Status {
                id: Uuid::from_u128(n as u128 + 1),
                name: format!("s{n}"),
                kind: (*kind).to_owned(),
                probability: 10,
                position: n as i32 + 1,
            })
            .collect()
    }

    #[test]
    fn ids_are_postgres_md5_uuids() {
        // select md5('opportunity-1')::uuid
        assert_eq!(
            opportunity_id(1).to_string(),
            format!("{:x}", Md5::digest(b"opportunity-1"))
                .chars()
                .enumerate()
                .flat_map(|(n, c)| {
                    let dash = matches!(n, 8 | 12 | 16 | 20);
                    dash.then_some('-').into_iter().chain(std::iter::once(c))
                })
                .collect::<String>()
        );
    }

    #[test]
    fn paths_never_repeat_a_status_and_average_four_entries() {
        let statuses = statuses();
        let mut entries = 0;
        for i in 1..=10_000 {
            let seed = opportunity(i, 1_000, &statuses);
            assert!(seed.path.windows(2).all(|w| w[0] != w[1]), "{seed:?}");
            assert!(
                seed.path[..seed.path.len() - 1]
                    .iter()
                    .all(|&s| statuses[s].is_open())
            );
            assert!(seed.times.windows(2).all(|w| w[0] < w[1]));
            entries += seed.path.len();
        }
        assert_eq!(entries / 10_000, 4);
    }

    #[test]
    fn next_status_always_moves() {
        let statuses = statuses();
        for status in &statuses {
            assert_ne!(next_status(&statuses, status.id).id, status.id);
        }
    }

    #[test]
    fn teams_have_one_manager_each() {
        let managers = salespeople().into_iter().filter(|s| s.manager).count();
        assert_eq!(managers, TEAMS as usize);
        assert_eq!(manager_of_team(3).team, "team-03");
        assert_eq!(reps().len(), (SALESPEOPLE - TEAMS) as usize);
    }
}
