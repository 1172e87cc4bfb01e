//! R15 time in status: each opportunity's `status_durations` and GetPipelineVelocity, with
//! the database's test clock (`World::set_clock`): every stay has a known length and no test
//! sleeps.

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use salesopp_proto::gateway::v1 as gpb;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_tests::fixtures::{
    CONSIDERING, INTERESTED, LOST, PRESENTED, QUOTATION, SENT_EMAIL, WON, change_request, mask, rid,
};
use salesopp_tests::{
    World, admin_token, authed, field_violations, manager_token, rep_token, token,
};
use tonic::Code;

/// Far enough ahead that the event retention never sweeps what the tests write.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 3, 1, 8, 0, 0).unwrap()
}

fn at_hours(hours: f64) -> DateTime<Utc> {
    t0() + Duration::milliseconds((hours * 3_600_000.0).round() as i64)
}

fn hours(h: f64) -> prost_types::Duration {
    let millis = (h * 3_600_000.0).round() as i64;
    prost_types::Duration {
        seconds: millis / 1000,
        nanos: ((millis % 1000) * 1_000_000) as i32,
    }
}

fn ts(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

async fn create(world: &mut World, token: &str, customer_id: &str, status_id: &str) -> String {
    world
        .try_create_request(
            token,
            opb::CreateOpportunityRequest {
                opportunity: Some(opb::Opportunity {
                    customer_id: customer_id.to_owned(),
                    title: "Time in status".to_owned(),
                    status_id: status_id.to_owned(),
                    ..Default::default()
                }),
                request_id: rid(),
                ..Default::default()
            },
        )
        .await
        .expect("create opportunity")
        .id
}

async fn change(world: &mut World, token: &str, id: &str, status_id: &str) -> opb::Opportunity {
    world
        .try_change(token, change_request(id, status_id))
        .await
        .expect("change status")
        .opportunity
        .expect("the opportunity")
}

fn duration_of<'a>(opportunity: &'a opb::Opportunity, status_id: &str) -> &'a opb::StatusDuration {
    opportunity
        .status_durations
        .iter()
        .find(|d| d.status_id == status_id)
        .unwrap_or_else(|| panic!("no duration for {status_id}: {opportunity:#?}"))
}

#[tokio::test]
async fn r15_a_b_a_b_gives_exact_entries_and_cumulative_times() {
    let mut world = World::new().await;
    let rep = rep_token();
    let customer = world.customer(&rep, "Siam Time Co.").await.id;
    world.set_clock(at_hours(0.0)).await;
    let id = create(&mut world, &rep, &customer, INTERESTED).await;

    // A (1 h) -> B (2 h) -> A (3 h) -> B, read 4 h later. The second move is an update with
    // `status_id` in the mask: both paths keep the durations (R8).
    world.set_clock(at_hours(1.0)).await;
    let moved = change(&mut world, &rep, &id, PRESENTED).await;
    assert_eq!(duration_of(&moved, INTERESTED).cumulative, Some(hours(1.0)));
    assert_eq!(
        duration_of(&moved, PRESENTED).current_stay,
        Some(hours(0.0))
    );
    world.set_clock(at_hours(3.0)).await;
    world
        .try_update_request(
            &rep,
            opb::UpdateOpportunityRequest {
                opportunity: Some(opb::Opportunity {
                    id: id.clone(),
                    status_id: INTERESTED.to_owned(),
                    ..Default::default()
                }),
                update_mask: mask(&["status_id"]),
                ..Default::default()
            },
        )
        .await
        .expect("update the status");
    world.set_clock(at_hours(6.0)).await;
    change(&mut world, &rep, &id, PRESENTED).await;
    world.set_clock(at_hours(10.0)).await;

    let got = world.get(&rep, &id).await;
    assert_eq!(
        got.status_durations,
        vec![
            opb::StatusDuration {
                status_id: INTERESTED.to_owned(),
                display_name: "Interested".to_owned(),
                entries: 2,
                cumulative: Some(hours(4.0)),
                last_entered_time: Some(ts(at_hours(3.0))),
                last_exited_time: Some(ts(at_hours(6.0))),
                current_stay: None,
            },
            opb::StatusDuration {
                status_id: PRESENTED.to_owned(),
                display_name: "Presented".to_owned(),
                entries: 2,
                cumulative: Some(hours(6.0)),
                last_entered_time: Some(ts(at_hours(6.0))),
                last_exited_time: Some(ts(at_hours(3.0))),
                current_stay: Some(hours(4.0)),
            },
        ],
        "pipeline order, reopenings counted, the current stay up to now"
    );

    // A list reads the same durations (one statement per page).
    let listed = world
        .opps
        .list_opportunities(authed(&rep, opb::ListOpportunitiesRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .opportunities;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status_durations, got.status_durations);

    // The clock moves on: only the current stay grows.
    world.set_clock(at_hours(12.5)).await;
    let later = world.get(&rep, &id).await;
    assert_eq!(duration_of(&later, INTERESTED).cumulative, Some(hours(4.0)));
    assert_eq!(duration_of(&later, PRESENTED).cumulative, Some(hours(8.5)));
    assert_eq!(
        duration_of(&later, PRESENTED).current_stay,
        Some(hours(6.5))
    );

    // The history says the same stays.
    let stays: Vec<_> = world
        .history(&rep, &id)
        .await
        .into_iter()
        .map(|entry| entry.time_in_previous_status)
        .collect();
    assert_eq!(
        stays,
        vec![None, Some(hours(1.0)), Some(hours(2.0)), Some(hours(3.0))]
    );
}

#[tokio::test]
async fn r15_moves_of_a_deleted_status_count() {
    let mut world = World::new().await;
    let rep = rep_token();
    let customer = world.customer(&rep, "Delete Move Co.").await.id;
    world.set_clock(at_hours(0.0)).await;
    let id = create(&mut world, &rep, &customer, SENT_EMAIL).await;
    world.set_clock(at_hours(5.0)).await;
    world
        .statuses
        .delete_status(authed(
            &admin_token(),
            spb::DeleteStatusRequest {
                id: SENT_EMAIL.to_owned(),
                replacement_status_id: QUOTATION.to_owned(),
                ..Default::default()
            },
        ))
        .await
        .expect("delete the status, moving its opportunity (R6)");
    world.set_clock(at_hours(7.0)).await;
    let got = world.get(&rep, &id).await;
    let sent = duration_of(&got, SENT_EMAIL);
    assert_eq!(
        (sent.entries, sent.cumulative, sent.last_exited_time),
        (1, Some(hours(5.0)), Some(ts(at_hours(5.0))))
    );
    let quotation = duration_of(&got, QUOTATION);
    assert_eq!(
        (
            quotation.entries,
            quotation.cumulative,
            quotation.last_entered_time,
            quotation.current_stay
        ),
        (
            1,
            Some(hours(2.0)),
            Some(ts(at_hours(5.0))),
            Some(hours(2.0))
        )
    );
}

/// One row of the velocity answer, as the fixture expects it.
fn row_of<'a>(
    response: &'a opb::GetPipelineVelocityResponse,
    status_id: &str,
) -> &'a opb::StatusVelocity {
    response
        .statuses
        .iter()
        .find(|row| row.status_id == status_id)
        .unwrap_or_else(|| panic!("no row for {status_id}: {response:#?}"))
}

async fn velocity(
    world: &mut World,
    token: &str,
    request: opb::GetPipelineVelocityRequest,
) -> Result<opb::GetPipelineVelocityResponse, tonic::Status> {
    world
        .opps
        .get_pipeline_velocity(authed(token, request))
        .await
        .map(tonic::Response::into_inner)
}

fn period(from_hours: f64, to_hours: f64) -> opb::GetPipelineVelocityRequest {
    opb::GetPipelineVelocityRequest {
        start_time: Some(ts(at_hours(from_hours))),
        end_time: Some(ts(at_hours(to_hours))),
        ..Default::default()
    }
}

#[tokio::test]
async fn r15_velocity_medians_p90_and_won_share_match_a_known_fixture() {
    let mut world = World::new().await;
    let rep = rep_token();
    let customer = world.customer(&rep, "Velocity Co.").await.id;
    // Each step: (hour, opportunity, status). Creations are the first step of each.
    let steps: [(f64, usize, &str); 16] = [
        (-2.0, 0, INTERESTED), // o0's first two entries are before the period
        (-1.0, 0, PRESENTED),
        (0.0, 1, INTERESTED),
        (0.0, 2, INTERESTED),
        (0.0, 3, INTERESTED),
        (0.0, 4, INTERESTED),
        (0.0, 5, INTERESTED),
        (1.0, 1, PRESENTED),
        (2.0, 2, PRESENTED),
        (3.0, 1, WON),
        (3.0, 3, PRESENTED),
        (4.0, 3, WON),
        (4.0, 4, LOST),
        (5.0, 5, PRESENTED),
        (6.0, 2, LOST),
        (8.0, 0, WON),
    ];
    let mut ids: Vec<Option<String>> = vec![None; 7];
    for (hour, index, status) in steps {
        world.set_clock(at_hours(hour)).await;
        match ids[index].clone() {
            None => ids[index] = Some(create(&mut world, &rep, &customer, status).await),
            Some(id) => {
                change(&mut world, &rep, &id, status).await;
            }
        }
    }
    // At the period's end (exclusive): not counted.
    world.set_clock(at_hours(9.0)).await;
    create(&mut world, &rep, &customer, INTERESTED).await;
    world.set_clock(at_hours(10.0)).await;

    let answer = velocity(&mut world, &rep, period(0.0, 9.0))
        .await
        .expect("velocity");
    let expect = |status_id: &str, entered, exited, median: f64, p90: f64, won, share: f64| {
        let row = row_of(&answer, status_id);
        assert_eq!(
            (
                row.entered_count,
                row.exited_count,
                row.median_time_in_status,
                row.p90_time_in_status,
                row.won_count,
                row.won_share
            ),
            (
                entered,
                exited,
                Some(hours(median)),
                Some(hours(p90)),
                won,
                share
            ),
            "{}",
            row.status_display_name
        );
    };
    // Interested: stays 1, 2, 3, 4, 5 h; o1 and o3 won.
    expect(INTERESTED, 5, 5, 3.0, 4.6, 2, 0.4);
    // Presented: stays 2 (o1), 4 (o2), 1 (o3) and 5 h so far (o5, still there).
    expect(PRESENTED, 4, 3, 3.0, 4.7, 2, 0.5);
    // Won: 7 h (o1), 6 h (o3), 2 h (o0, whose earlier entries are outside the period).
    expect(WON, 3, 0, 6.0, 6.8, 3, 1.0);
    // Lost: 6 h (o4), 4 h (o2).
    expect(LOST, 2, 0, 5.0, 5.8, 0, 0.0);
    let quiet = row_of(&answer, CONSIDERING);
    assert_eq!(
        (
            quiet.entered_count,
            quiet.median_time_in_status,
            quiet.won_share
        ),
        (0, None, 0.0)
    );
    let order: Vec<i32> = answer.statuses.iter().map(|row| row.position).collect();
    assert_eq!(
        order,
        vec![1, 2, 3, 4, 5, 6, 7],
        "every live status, in pipeline order"
    );
}

#[tokio::test]
async fn r15_velocity_respects_r12() {
    let mut world = World::new().await;
    let rep = rep_token(); // rep-a1, team north
    let north = token("rep-n2", "Nok North", "north", &["sales_rep"]);
    let south = token("rep-s1", "Sak South", "south", &["sales_rep"]);
    let customer = world.customer(&rep, "Visibility Co.").await.id;
    world.set_clock(at_hours(0.0)).await;
    for caller in [&rep, &north, &south] {
        create(&mut world, caller, &customer, INTERESTED).await;
    }
    world.set_clock(at_hours(1.0)).await;
    let cases: [(&str, String, Vec<&str>, &str, i64); 7] = [
        ("a rep: their own", rep.clone(), vec![], "", 1),
        (
            "a rep asking for another: nothing",
            rep.clone(),
            vec!["rep-s1"],
            "",
            0,
        ),
        ("a manager: the team", manager_token(), vec![], "", 2),
        (
            "a manager asking for another team: nothing",
            manager_token(),
            vec![],
            "south",
            0,
        ),
        ("an admin: everyone", admin_token(), vec![], "", 3),
        ("an admin: one team", admin_token(), vec![], "south", 1),
        (
            "an admin: two owners",
            admin_token(),
            vec!["rep-a1", "rep-s1"],
            "",
            2,
        ),
    ];
    for (what, caller, owners, team, expected) in cases {
        let mut request = period(0.0, 1.0);
        request.owner_ids = owners.iter().map(|o| (*o).to_owned()).collect();
        request.team = team.to_owned();
        let answer = velocity(&mut world, &caller, request).await.expect(what);
        assert_eq!(
            row_of(&answer, INTERESTED).entered_count,
            expected,
            "{what}"
        );
    }
}

#[tokio::test]
async fn r15_velocity_bad_input_names_each_field() {
    let mut world = World::new().await;
    let rep = rep_token();
    let cases: [(&str, opb::GetPipelineVelocityRequest, Vec<&str>); 6] = [
        (
            "no period",
            opb::GetPipelineVelocityRequest::default(),
            vec!["start_time", "end_time"],
        ),
        ("an empty period", period(2.0, 2.0), vec!["end_time"]),
        (
            "the end before the start",
            period(2.0, 1.0),
            vec!["end_time"],
        ),
        (
            "owners and a team",
            opb::GetPipelineVelocityRequest {
                owner_ids: vec!["rep-a1".into()],
                team: "north".into(),
                ..period(0.0, 1.0)
            },
            vec!["team"],
        ),
        (
            "an empty owner id, and no end",
            opb::GetPipelineVelocityRequest {
                owner_ids: vec![" ".into()],
                end_time: None,
                ..period(0.0, 1.0)
            },
            vec!["owner_ids[0]", "end_time"],
        ),
        (
            "a time out of range",
            opb::GetPipelineVelocityRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..period(0.0, 1.0)
            },
            vec!["start_time.nanos"],
        ),
    ];
    for (what, request, fields) in cases {
        let status = velocity(&mut world, &rep, request).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        let named: Vec<String> = field_violations(&status)
            .into_iter()
            .map(|(field, _)| field)
            .collect();
        assert_eq!(named, fields, "{what}");
    }
}

#[tokio::test]
async fn r15_gateway_pipeline_shows_time_in_the_current_status() {
    let mut world = World::new().await;
    let rep = rep_token();
    let customer = world.customer(&rep, "Board Co.").await.id;
    world.set_clock(at_hours(0.0)).await;
    let id = create(&mut world, &rep, &customer, INTERESTED).await;
    let waiting = create(&mut world, &rep, &customer, INTERESTED).await;
    world.set_clock(at_hours(1.0)).await;
    change(&mut world, &rep, &id, PRESENTED).await;
    world.set_clock(at_hours(3.5)).await;
    let board = world
        .gateway
        .get_salesperson_pipeline(authed(&rep, gpb::GetSalespersonPipelineRequest::default()))
        .await
        .expect("pipeline")
        .into_inner();
    let time_of = |opportunity_id: &str| {
        board
            .stages
            .iter()
            .flat_map(|stage| &stage.opportunities)
            .find(|item| {
                item.opportunity
                    .as_ref()
                    .is_some_and(|o| o.id == opportunity_id)
            })
            .and_then(|item| item.time_in_status)
    };
    assert_eq!(time_of(&id), Some(hours(2.5)));
    assert_eq!(time_of(&waiting), Some(hours(3.5)));
}

#[tokio::test]
async fn r15_test_clock_is_set_only_on_purpose() {
    let world = World::new().await;
    let refused = sqlx::query("insert into salesopp_test_clock (now) values (now())")
        .execute(world.db())
        .await
        .expect_err("a stray write of the test clock is refused");
    assert!(
        refused
            .to_string()
            .contains("salesopp_test_clock is for tests"),
        "{refused}"
    );
    let clock: Option<DateTime<Utc>> = sqlx::query_scalar("select now from salesopp_test_clock")
        .fetch_optional(world.db())
        .await
        .expect("read the clock");
    assert_eq!(clock, None, "unset: salesopp_now() is clock_timestamp()");
}
