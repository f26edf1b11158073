use std::collections::BTreeMap;

use super::*;
use crate::ir::parse_pipeline;
use crate::state::tests::new_run;
use crate::state::Command;

const LINEAR: &str = include_str!("../engine/testdata/linear.yaml");

/// 40 runs of one pipeline and 2 of another, through `apply`, so the runs share as they do
/// on a node.
fn state_of_shared_runs() -> ClusterState {
    let mut st = ClusterState::default();
    let spec = parse_pipeline(LINEAR).expect("the test pipeline parses");
    let mut other = spec.clone();
    other.name = "another".into();
    for i in 0..42u64 {
        let spec = if i < 40 { spec.clone() } else { other.clone() };
        let params = crate::ir::resolve_run_parameters(&spec, &BTreeMap::new()).unwrap();
        let run = new_run(&format!("r{i}"), spec, params, i as i64);
        st.apply(i + 1, Command::CreateRun(run));
    }
    st
}

fn encoded(st: &ClusterState, format: SnapshotFormat) -> Vec<u8> {
    let mut out = Vec::new();
    encode_snapshot(st, format, &mut out).unwrap();
    out
}

fn decoded(bytes: &[u8]) -> std::io::Result<ClusterState> {
    decode_snapshot(&mut &bytes[..])
}

#[test]
fn both_formats_decode_to_the_state_and_format_2_holds_each_pipeline_once() {
    let st = state_of_shared_runs();
    let plain = encoded(&st, SnapshotFormat::Plain);
    let tabled = encoded(&st, SnapshotFormat::Tabled);
    assert!(tabled.starts_with(TABLED_START));
    assert_eq!(
        plain,
        serde_json::to_vec(&st).unwrap(),
        "format 1 is the state's own JSON, as written before format 2"
    );
    assert_eq!(decoded(&plain).unwrap(), st);
    assert_eq!(decoded(&tabled).unwrap(), st);
    let table: serde_json::Value = serde_json::from_slice(&tabled).unwrap();
    assert_eq!(table["pipelines"].as_array().map(Vec::len), Some(2));
    assert_eq!(table["state"]["runs"]["r0"]["pipeline"], 0);
    assert_eq!(table["state"]["runs"]["r41"]["pipeline"], 1);
    assert!(
        tabled.len() * 4 < plain.len(),
        "format 2 is {} bytes, format 1 {}",
        tabled.len(),
        plain.len()
    );
    assert_eq!(
        snapshot_format(&mut &tabled[..]).unwrap(),
        SnapshotFormat::Tabled
    );
    assert_eq!(
        snapshot_format(&mut &plain[..]).unwrap(),
        SnapshotFormat::Plain
    );
}

#[test]
fn runs_decoded_from_format_2_share_their_pipelines() {
    let back = decoded(&encoded(&state_of_shared_runs(), SnapshotFormat::Tabled)).unwrap();
    assert!(Arc::ptr_eq(
        &back.runs["r0"].pipeline,
        &back.runs["r39"].pipeline
    ));
    assert!(!Arc::ptr_eq(
        &back.runs["r0"].pipeline,
        &back.runs["r40"].pipeline
    ));
}

#[test]
fn the_golden_state_of_format_1_still_decodes() {
    let golden = include_str!("testdata/cluster_state_golden.json");
    let old: ClusterState = serde_json::from_str(golden).unwrap();
    assert!(!old.runs.is_empty());
    assert_eq!(decoded(golden.as_bytes()).unwrap(), old);
    let again = decoded(&encoded(&old, SnapshotFormat::Tabled)).unwrap();
    assert_eq!(again, old);
}

#[test]
fn outside_a_snapshot_a_run_carries_its_whole_pipeline() {
    let st = state_of_shared_runs();
    // Encoding a snapshot leaves no table behind on the thread.
    let _ = encoded(&st, SnapshotFormat::Tabled);
    let run = serde_json::to_value(&*st.runs["r0"]).unwrap();
    assert!(run["pipeline"].is_object(), "{}", run["pipeline"]);
    let tabled = encoded(&st, SnapshotFormat::Tabled);
    let _ = decoded(&tabled).unwrap();
    let mut by_position = run.clone();
    by_position["pipeline"] = 0.into();
    let err = serde_json::from_value::<crate::engine::RunRecord>(by_position).unwrap_err();
    assert!(
        err.to_string()
            .contains("by position outside a snapshot's table"),
        "{err}"
    );
}

fn refused(bytes: &[u8]) -> String {
    decoded(bytes)
        .expect_err("the snapshot is refused")
        .to_string()
}

#[test]
fn a_damaged_or_newer_snapshot_of_format_2_is_refused_with_its_reason() {
    let st = state_of_shared_runs();
    let text = String::from_utf8(encoded(&st, SnapshotFormat::Tabled)).unwrap();
    let newer = text.replacen(r#""gantry_snapshot":2"#, r#""gantry_snapshot":3"#, 1);
    assert!(
        refused(newer.as_bytes()).contains("snapshot format 3: this version reads formats 1 and 2"),
        "{}",
        refused(newer.as_bytes())
    );
    let out_of_table = text.replacen(r#""pipeline":1"#, r#""pipeline":7"#, 1);
    assert!(
        refused(out_of_table.as_bytes())
            .contains("names pipeline 7 of the snapshot's table, which holds 2"),
        "{}",
        refused(out_of_table.as_bytes())
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let state_first = format!(
        r#"{{"gantry_snapshot":2,"state":{},"pipelines":{}}}"#,
        v["state"], v["pipelines"]
    );
    assert!(
        refused(state_first.as_bytes()).contains("unexpected field `state`"),
        "{}",
        refused(state_first.as_bytes())
    );
    let no_state = format!(r#"{{"gantry_snapshot":2,"pipelines":{}}}"#, v["pipelines"]);
    assert!(refused(no_state.as_bytes()).contains("missing field `state`"));
    let cut = &text.as_bytes()[..text.len() / 2];
    assert!(!refused(cut).is_empty());
}
