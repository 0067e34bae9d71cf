//! The `steps` of a submission and the dependency graph their `after` lists form (contract
//! section 2): without any `after` the steps run in array order; with one, every step waits for
//! exactly the steps it lists, and the graph must be free of cycles.

use std::collections::HashMap;

use serde_json::Value;

use super::cursor::Cursor;
use super::retry::parse_retry;
use super::MAX_TIMEOUT_MS;
use crate::saga::definition::{RetryPolicy, StepDefinition, DEFAULT_STEP_TIMEOUT_MS, MAX_STEPS};

const STEP_FIELDS: &[&str] = &[
    "name",
    "participant",
    "action",
    "compensation",
    "payload",
    "timeout_ms",
    "retry",
    "compensation_retry",
    "after",
];

/// A step with its fields checked but its `after` list not yet resolved to indices (that needs
/// every step's name).
struct StepDraft {
    def: StepDefinition,
    /// Whether the name was present and a string, so other steps may refer to it.
    has_name: bool,
    has_after: bool,
}

pub(super) fn parse_steps(mut steps: Cursor<'_, '_>) -> Vec<StepDefinition> {
    let Some(value) = steps.value() else {
        steps.error("is required");
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        steps.error("must be an array");
        return Vec::new();
    };
    if items.is_empty() {
        steps.error("must have at least 1 step");
        return Vec::new();
    }
    if items.len() > MAX_STEPS {
        steps.error(format!(
            "must have at most {MAX_STEPS} steps, got {}",
            items.len()
        ));
    }

    let drafts: Vec<Option<StepDraft>> = (0..items.len())
        .map(|i| parse_step(steps.item(i)))
        .collect();

    // First occurrence wins; the later duplicate is the one reported.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, draft) in drafts.iter().enumerate() {
        let Some(draft) = draft.as_ref().filter(|d| d.has_name) else {
            continue;
        };
        let name = draft.def.name.as_str();
        if index.contains_key(name) {
            steps
                .item(i)
                .field("name")
                .error(format!("duplicate step name \"{name}\""));
        } else {
            index.insert(name, i);
        }
    }

    let graph = drafts
        .iter()
        .any(|d| d.as_ref().is_some_and(|d| d.has_after));
    let deps: Vec<Vec<usize>> = if graph {
        (0..drafts.len())
            .map(|i| resolve_after(steps.item(i).field("after"), i, &index))
            .collect()
    } else {
        (0..drafts.len())
            .map(|i| if i == 0 { Vec::new() } else { vec![i - 1] })
            .collect()
    };

    if let Some(cycle) = find_cycle(&deps) {
        let names: Vec<&str> = cycle
            .iter()
            .map(|&i| drafts[i].as_ref().map_or("?", |d| d.def.name.as_str()))
            .collect();
        steps.error(format!("dependency cycle: {}", names.join(" -> ")));
    }

    drafts
        .into_iter()
        .zip(deps)
        .filter_map(|(draft, after)| draft.map(|d| StepDefinition { after, ..d.def }))
        .collect()
}

/// One step's fields; `None` (reported) if it is no object.
fn parse_step(mut step: Cursor<'_, '_>) -> Option<StepDraft> {
    if !step.object(STEP_FIELDS, "must be an object") {
        return None;
    }

    let raw_name = step.field("name").value().and_then(Value::as_str);
    let name = step.field("name").required_name();
    let participant = step.field("participant").required_name();
    let action = step.field("action").required_name();
    let compensation = step.field("compensation").name();
    let payload = step
        .field("payload")
        .value()
        .cloned()
        .unwrap_or(Value::Null);
    let timeout_ms = step
        .field("timeout_ms")
        .u64_or(1..=MAX_TIMEOUT_MS, DEFAULT_STEP_TIMEOUT_MS);
    let retry = parse_retry(step.field("retry"), RetryPolicy::action_default());
    let compensation_retry = parse_retry(
        step.field("compensation_retry"),
        RetryPolicy::compensation_default(),
    );

    Some(StepDraft {
        def: StepDefinition {
            // A badly formed name is already reported; keep the raw text so that duplicate and
            // `after` checks still see it and do not pile up follow-on errors.
            name: name
                .or_else(|| raw_name.map(str::to_string))
                .unwrap_or_default(),
            participant: participant.unwrap_or_default(),
            action: action.unwrap_or_default(),
            compensation,
            payload,
            timeout_ms,
            retry,
            compensation_retry,
            after: Vec::new(),
        },
        has_name: raw_name.is_some(),
        has_after: step.field("after").value().is_some(),
    })
}

/// Turns step `step`'s `after` list into sorted, distinct indices of other steps.
fn resolve_after(
    mut after: Cursor<'_, '_>,
    step: usize,
    index: &HashMap<&str, usize>,
) -> Vec<usize> {
    let Some(value) = after.value() else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        after.error("must be an array of step names");
        return Vec::new();
    };
    let mut deps = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let mut item_cursor = after.item(j);
        let Some(name) = item.as_str() else {
            item_cursor.error("must be a string");
            continue;
        };
        match index.get(name) {
            None => item_cursor.error(format!("unknown step \"{name}\"")),
            Some(&dep) if dep == step => item_cursor.error("a step cannot depend on itself"),
            Some(dep) if deps.contains(dep) => {
                item_cursor.error(format!("duplicate dependency \"{name}\""))
            }
            Some(&dep) => deps.push(dep),
        }
    }
    deps.sort_unstable();
    deps
}

/// The first dependency cycle found, as step indices with the first one repeated at the end
/// (`[a, b, a]`: a waits for b, which waits for a). Deterministic: nodes and edges are visited in
/// ascending index order, so the same submission always reports the same cycle.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mark {
        New,
        Active,
        Done,
    }

    fn visit(
        node: usize,
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[node] = Mark::Active;
        stack.push(node);
        for &dep in &deps[node] {
            match marks[dep] {
                Mark::Active => {
                    let start = stack.iter().position(|&n| n == dep)?;
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(dep);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(dep, deps, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[node] = Mark::Done;
        None
    }

    let mut marks = vec![Mark::New; deps.len()];
    let mut stack = Vec::new();
    (0..deps.len()).find_map(|node| {
        if marks[node] == Mark::New {
            visit(node, deps, &mut marks, &mut stack)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::submission::fixtures::{graph, minimal, single_error, step, with, with_step};
    use crate::submission::parse_submission;

    #[test]
    fn step_names_are_checked() {
        for field in ["name", "participant", "action"] {
            let mut body = minimal();
            body["steps"][0].as_object_mut().map(|o| o.remove(field));
            assert_eq!(
                single_error(&body, &format!("steps[0].{field}")),
                "is required"
            );
        }
        for field in ["name", "participant", "action", "compensation"] {
            let body = with_step(minimal(), 0, field, json!("bad name"));
            let msg = single_error(&body, &format!("steps[0].{field}"));
            assert!(msg.starts_with("must match"), "{msg}");
            let body = with_step(minimal(), 0, field, json!(["x"]));
            assert_eq!(
                single_error(&body, &format!("steps[0].{field}")),
                "must be a string"
            );
        }
    }

    #[test]
    fn steps_rules() {
        let mut body = minimal();
        body.as_object_mut().map(|o| o.remove("steps"));
        assert_eq!(single_error(&body, "steps"), "is required");
        assert_eq!(
            single_error(&with(minimal(), "steps", json!({})), "steps"),
            "must be an array"
        );
        single_error(&with(minimal(), "steps", json!([])), "steps");
        let many: Vec<Value> = (0..=MAX_STEPS)
            .map(|i| step(&format!("s{i}"), Value::Null))
            .collect();
        single_error(&with(minimal(), "steps", json!(many)), "steps");
        let max: Vec<Value> = (0..MAX_STEPS)
            .map(|i| step(&format!("s{i}"), Value::Null))
            .collect();
        let def = parse_submission(&with(minimal(), "steps", json!(max))).expect("valid");
        assert_eq!(def.steps.len(), MAX_STEPS);
        assert_eq!(def.steps[99].after, vec![98]);
        assert_eq!(
            single_error(
                &with(minimal(), "steps", json!([step("a", Value::Null), "b"])),
                "steps[1]"
            ),
            "must be an object"
        );
    }

    #[test]
    fn duplicate_step_names_blame_the_later_one() {
        let body = graph(json!([
            step("reserve", Value::Null),
            step("charge", Value::Null),
            step("charge", Value::Null)
        ]));
        assert_eq!(
            single_error(&body, "steps[2].name"),
            "duplicate step name \"charge\""
        );
    }

    #[test]
    fn sequential_order_without_after() {
        let def = parse_submission(&graph(json!([
            step("a", Value::Null),
            step("b", Value::Null),
            step("c", Value::Null)
        ])))
        .expect("valid");
        let after: Vec<Vec<usize>> = def.steps.iter().map(|s| s.after.clone()).collect();
        assert_eq!(after, vec![vec![], vec![0], vec![1]]);
    }

    #[test]
    fn any_after_switches_to_the_graph() {
        // One empty `after` is enough: every step then has exactly its own list.
        let def = parse_submission(&graph(json!([
            step("a", Value::Null),
            step("b", json!([])),
            step("c", Value::Null)
        ])))
        .expect("valid");
        assert!(def.steps.iter().all(|s| s.after.is_empty()));

        let def = parse_submission(&graph(json!([
            step("a", Value::Null),
            step("b", json!(["a"])),
            step("c", json!(["a"])),
            step("d", json!(["c", "b", "a"]))
        ])))
        .expect("valid");
        let after: Vec<Vec<usize>> = def.steps.iter().map(|s| s.after.clone()).collect();
        assert_eq!(after, vec![vec![], vec![0], vec![0], vec![0, 1, 2]]);
        assert_eq!(def.dependents(0).collect::<Vec<_>>(), vec![1, 2, 3]);

        // A step may depend on one listed later in the array.
        let def = parse_submission(&graph(json!([
            step("a", json!(["b"])),
            step("b", json!([]))
        ])))
        .expect("valid");
        assert_eq!(def.steps[0].after, vec![1]);
    }

    #[test]
    fn after_rules() {
        let unknown = graph(json!([
            step("a", Value::Null),
            step("b", json!(["charge"]))
        ]));
        assert_eq!(
            single_error(&unknown, "steps[1].after[0]"),
            "unknown step \"charge\""
        );
        let not_array = graph(json!([step("a", Value::Null), step("b", json!("a"))]));
        assert_eq!(
            single_error(&not_array, "steps[1].after"),
            "must be an array of step names"
        );
        let not_string = graph(json!([step("a", Value::Null), step("b", json!(["a", 0]))]));
        assert_eq!(
            single_error(&not_string, "steps[1].after[1]"),
            "must be a string"
        );
        let self_dep = graph(json!([step("a", Value::Null), step("b", json!(["b"]))]));
        single_error(&self_dep, "steps[1].after[0]");
        let dup = graph(json!([
            step("a", Value::Null),
            step("b", json!(["a", "a"]))
        ]));
        assert_eq!(
            single_error(&dup, "steps[1].after[1]"),
            "duplicate dependency \"a\""
        );
    }

    #[test]
    fn cycles_are_reported_once_with_their_path() {
        let two = graph(json!([step("a", json!(["b"])), step("b", json!(["a"]))]));
        assert_eq!(single_error(&two, "steps"), "dependency cycle: a -> b -> a");

        let three = graph(json!([
            step("start", json!([])),
            step("x", json!(["start", "z"])),
            step("y", json!(["x"])),
            step("z", json!(["y"]))
        ]));
        assert_eq!(
            single_error(&three, "steps"),
            "dependency cycle: x -> z -> y -> x"
        );
    }

    #[test]
    fn cycle_finder_accepts_dags() {
        assert_eq!(find_cycle(&[vec![], vec![0], vec![0, 1]]), None);
        assert_eq!(
            find_cycle(&[vec![1], vec![2], vec![0]]),
            Some(vec![0, 1, 2, 0])
        );
    }
}
