//! Answers compared across reads. An opportunity's `status_durations` count its current stay
//! up to the moment of each response (R15), so two reads of an unchanged opportunity differ
//! there and nowhere else. [`Settled::settled`] keeps what stays put between reads: for the
//! current status, `cumulative` becomes the ended stays alone (`cumulative - current_stay`,
//! exact, since the server computes both from one clock reading) and `current_stay` is
//! dropped; the gateway's `time_in_status` (that same stay) likewise.

use prost_types::Duration;
use salesopp_proto::gateway::v1 as gpb;
use salesopp_proto::opportunity::v1 as opb;

/// A copy without what the clock changes between two reads.
pub trait Settled {
    fn settled(&self) -> Self;
}

fn micros(duration: &Duration) -> i128 {
    i128::from(duration.seconds) * 1_000_000 + i128::from(duration.nanos) / 1_000
}

fn from_micros(micros: i128) -> Duration {
    Duration {
        seconds: i64::try_from(micros.div_euclid(1_000_000)).expect("seconds fit"),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).expect("nanos fit"),
    }
}

impl Settled for opb::StatusDuration {
    fn settled(&self) -> Self {
        let Some(stay) = &self.current_stay else {
            return self.clone();
        };
        let cumulative = self
            .cumulative
            .as_ref()
            .expect("a stay has a cumulative time");
        opb::StatusDuration {
            cumulative: Some(from_micros(micros(cumulative) - micros(stay))),
            current_stay: None,
            ..self.clone()
        }
    }
}

impl Settled for opb::Opportunity {
    fn settled(&self) -> Self {
        opb::Opportunity {
            status_durations: self.status_durations.settled(),
            ..self.clone()
        }
    }
}

impl<T: Settled> Settled for Vec<T> {
    fn settled(&self) -> Self {
        self.iter().map(Settled::settled).collect()
    }
}

impl<T: Settled> Settled for Option<T> {
    fn settled(&self) -> Self {
        self.as_ref().map(Settled::settled)
    }
}

impl Settled for gpb::PipelineOpportunity {
    fn settled(&self) -> Self {
        gpb::PipelineOpportunity {
            opportunity: self.opportunity.settled(),
            time_in_status: None,
            ..self.clone()
        }
    }
}

impl Settled for gpb::PipelineStage {
    fn settled(&self) -> Self {
        gpb::PipelineStage {
            opportunities: self.opportunities.settled(),
            ..self.clone()
        }
    }
}

impl Settled for gpb::GetSalespersonPipelineResponse {
    fn settled(&self) -> Self {
        gpb::GetSalespersonPipelineResponse {
            stages: self.stages.settled(),
            ..self.clone()
        }
    }
}
