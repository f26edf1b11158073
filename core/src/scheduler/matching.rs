//! Whether an agent's labels, taints and GPU models suit a step. Pure.

use std::collections::BTreeMap;

use gantry_model::{Taint, TaintEffect, Toleration};

/// Accelerator types that name the vendor's resource rather than a model: any NVIDIA GPU does.
const ANY_GPU: &[&str] = &["", "nvidia.com/gpu", "gpu", "nvidia_gpu", "nvidia"];

/// Words that model names and KFP accelerator types use inconsistently (`NVIDIA_TESLA_T4`
/// against NVML's `Tesla T4`, `NVIDIA_H100_80GB` against `NVIDIA H100 80GB HBM3`).
const NOISE: &[&str] = &["NVIDIA", "TESLA"];

/// The words of a model name or accelerator type, vendor words aside. Borrowed, no allocation:
/// placement calls this for every GPU of every agent it looks at.
fn tokens(s: &str) -> impl Iterator<Item = &str> + Clone {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty() && !NOISE.iter().any(|n| n.eq_ignore_ascii_case(t)))
}

/// Whether a GPU whose NVML name is `model` is of the KFP accelerator type `wanted`
/// (`set_accelerator_type`): every word of the type, vendor words aside, is a word of the model
/// name, so `NVIDIA_TESLA_T4` matches `Tesla T4`, `A100` matches `NVIDIA A100-SXM4-40GB`, and
/// `L4` does not match `NVIDIA L40S`.
pub fn gpu_model_matches(wanted: Option<&str>, model: &str) -> bool {
    let Some(wanted) = wanted.map(str::trim) else {
        return true;
    };
    if ANY_GPU.iter().any(|a| a.eq_ignore_ascii_case(wanted)) {
        return true;
    }
    let have = tokens(model);
    tokens(wanted).all(|w| have.clone().any(|h| h.eq_ignore_ascii_case(w)))
}

/// The first `selector` entry the agent's labels lack, as `key=value`.
pub fn missing_label(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Option<String> {
    selector
        .iter()
        .find(|(k, v)| labels.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}={v}"))
}

/// Whether the agent's labels carry every `selector` entry ([`missing_label`] without the
/// words, and so without allocating: placement asks it of many agents).
pub fn has_labels(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The first taint that keeps the step off the agent: a `NoSchedule` or `NoExecute` taint that
/// no toleration accepts.
pub fn blocking_taint<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints.iter().find(|t| {
        t.effect != TaintEffect::PreferNoSchedule && !tolerations.iter().any(|tol| tol.tolerates(t))
    })
}

/// How many `PreferNoSchedule` taints the step does not tolerate: agents with fewer rank first.
pub fn untolerated_preferences(taints: &[Taint], tolerations: &[Toleration]) -> usize {
    taints
        .iter()
        .filter(|t| {
            t.effect == TaintEffect::PreferNoSchedule
                && !tolerations.iter().any(|tol| tol.tolerates(t))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_models_match_kfp_accelerator_types() {
        let yes = [
            ("NVIDIA_TESLA_T4", "Tesla T4"),
            ("NVIDIA_TESLA_T4", "NVIDIA T4"),
            ("NVIDIA_H100_80GB", "NVIDIA H100 80GB HBM3"),
            ("H100", "NVIDIA H100 80GB HBM3"),
            ("NVIDIA_A100", "NVIDIA A100-SXM4-40GB"),
            ("a100", "NVIDIA A100-SXM4-40GB"),
            ("nvidia.com/gpu", "NVIDIA L40S"),
            ("NVIDIA_RTX_A6000", "NVIDIA RTX A6000"),
        ];
        for (want, model) in yes {
            assert!(gpu_model_matches(Some(want), model), "{want} ~ {model}");
        }
        assert!(gpu_model_matches(None, "anything"));
        let no = [
            ("NVIDIA_L4", "NVIDIA L40S"),
            ("NVIDIA_H100_80GB", "NVIDIA H100 PCIe"),
            ("NVIDIA_TESLA_V100", "Tesla T4"),
            ("A100", "NVIDIA A10"),
        ];
        for (want, model) in no {
            assert!(!gpu_model_matches(Some(want), model), "{want} !~ {model}");
        }
    }

    #[test]
    fn selectors_and_taints() {
        let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        let sel = |k: &str, v: &str| -> BTreeMap<String, String> { [(k.into(), v.into())].into() };
        assert_eq!(missing_label(&sel("zone", "a"), &labels), None);
        assert_eq!(
            missing_label(&sel("zone", "b"), &labels).as_deref(),
            Some("zone=b")
        );
        assert_eq!(
            missing_label(&sel("rack", "1"), &labels).as_deref(),
            Some("rack=1")
        );

        let taints = vec![
            Taint::parse("soft:PreferNoSchedule").unwrap(),
            Taint::parse("gpu=h100:NoSchedule").unwrap(),
        ];
        assert_eq!(
            blocking_taint(&taints, &[])
                .map(|t| t.to_string())
                .as_deref(),
            Some("gpu=h100:NoSchedule")
        );
        let tol = Toleration {
            key: "gpu".into(),
            exists: true,
            ..Default::default()
        };
        assert_eq!(blocking_taint(&taints, std::slice::from_ref(&tol)), None);
        assert_eq!(untolerated_preferences(&taints, &[tol]), 1);
    }
}
