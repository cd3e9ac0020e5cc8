//! `plans`: set and show an organization's plan.

use super::*;

pub(super) async fn plans(cmd: PlansCommand, store: BoxedStore) -> Outcome {
    let manager = manager_for(store);
    match cmd {
        PlansCommand::Set {
            org,
            plan,
            requests,
            per,
            sessions,
        } => {
            let plan = match plan {
                PlanName::Free | PlanName::Paid
                    if requests.is_some() || per.is_some() || sessions.is_some() =>
                {
                    return Err(Failure::usage(
                        "--requests, --per and --sessions set an enterprise quota: use them with `enterprise` only",
                    ));
                }
                PlanName::Free => Plan::Free,
                PlanName::Paid => Plan::Paid,
                PlanName::Enterprise => {
                    let (Some(requests), Some(concurrent_sessions)) = (requests, sessions) else {
                        return Err(Failure::usage(
                            "the enterprise plan needs its quota: pass --requests N and --sessions N (and --per, default 60s)",
                        ));
                    };
                    let period = match per {
                        Some(p) => parse_duration("--per", &p)?,
                        None => Duration::from_secs(60),
                    };
                    if period.is_zero() || requests == 0 {
                        return Err(Failure::usage(
                            "--requests and --per must be more than zero",
                        ));
                    }
                    Plan::Enterprise(Quota {
                        requests,
                        period,
                        concurrent_sessions,
                    })
                }
            };
            let org_id = OrgId::from(org.as_str());
            manager
                .set_plan(&org_id, plan)
                .await
                .map_err(|e| manage_failure(e, None))?;
            eprintln!(
                "{org} is now on the {} plan ({}); it applies on its next request",
                plan.name(),
                quota_text(plan.quota())
            );
            Ok(())
        }
        PlansCommand::Show { org, json } => {
            let plan = manager
                .plan(&OrgId::from(org.as_str()))
                .await
                .map_err(|e| manage_failure(e, None))?;
            let q = plan.quota();
            if json {
                print_stdout(
                    &json!({
                        "org_id": org,
                        "plan": plan.name(),
                        "requests": q.requests,
                        "period_secs": q.period.as_secs(),
                        "concurrent_sessions": q.concurrent_sessions,
                    })
                    .to_string(),
                )
            } else {
                print_stdout(&format!(
                    "org:    {org}\nplan:   {}\nquota:  {}",
                    plan.name(),
                    quota_text(q)
                ))
            }
        }
    }
}

pub(super) fn quota_text(q: Quota) -> String {
    format!(
        "{} requests per {}, {} concurrent sessions",
        q.requests,
        humantime::format_duration(q.period),
        q.concurrent_sessions
    )
}
