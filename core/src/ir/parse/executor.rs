//! Executors: containers (image, command, environment, resources) and importers.

use gantry_model::ResourceRequest;
use serde_json::{Map as JsonMap, Value};

use super::walk::{artifact_schema, legacy_value, list_of_objs, text, Obj};
use crate::ir::error::{index, list_names, IrError};
use crate::ir::model::{
    ContainerExecutor, DynamicResources, ExecutorSpec, ImporterSpec, ImporterUri,
};
use crate::ir::quantity::{
    parse_accelerator_count, parse_cpu_quantity, parse_memory_quantity, QuantityError,
};

pub(super) fn parse_executor(v: &Value, path: String) -> Result<ExecutorSpec, IrError> {
    let e = Obj::of(v, path)?;
    let kinds: Vec<&String> = e.map.keys().collect();
    match kinds.as_slice() {
        [k] if k.as_str() == "container" => Ok(ExecutorSpec::Container(parse_container(
            &e.req_child("container")?,
        )?)),
        [k] if k.as_str() == "importer" => Ok(ExecutorSpec::Importer(parse_importer(
            &e.req_child("importer")?,
        )?)),
        [k] if k.as_str() == "resolver" || k.as_str() == "customJob" => Err(IrError::new(
            e.path.clone(),
            format!(
                "unsupported executor kind {k:?}: Gantry runs container and importer executors"
            ),
        )),
        [k] => Err(IrError::new(
            e.at(k),
            format!("unknown executor kind {k:?} (known: container, importer)"),
        )),
        [] => Err(IrError::new(
            e.path.clone(),
            "an executor needs `container` or `importer`",
        )),
        _ => Err(IrError::new(
            e.path.clone(),
            format!(
                "an executor has one kind, this one has {}",
                list_names(kinds.iter().map(|k| k.as_str()))
            ),
        )),
    }
}

fn parse_container(c: &Obj<'_>) -> Result<ContainerExecutor, IrError> {
    let image = c.req_text("image")?;
    if image.trim().is_empty() {
        return Err(IrError::new(c.at("image"), "the image is empty"));
    }
    let mut env = Vec::new();
    for (i, item) in list_of_objs(c, "env")?.iter().enumerate() {
        let name = item.req_text("name")?;
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(IrError::new(
                index(&c.at("env"), i),
                format!("{name:?} is not a valid environment variable name"),
            ));
        }
        env.push((name, item.text("value")?.unwrap_or_default()));
    }
    let (resources, dynamic_resources) = match c.child("resources")? {
        Some(r) => parse_resources(&r)?,
        None => (ResourceRequest::default(), DynamicResources::default()),
    };
    Ok(ContainerExecutor {
        image,
        command: c.text_list("command")?,
        args: c.text_list("args")?,
        env,
        resources,
        dynamic_resources,
    })
}

/// A resource field: a constant, or the name of the input parameter a placeholder reads.
enum Quantity<T> {
    Absent,
    Constant(T),
    Input(String),
}

fn parse_resources(r: &Obj<'_>) -> Result<(ResourceRequest, DynamicResources), IrError> {
    let mut req = ResourceRequest::default();
    let mut dynamic = DynamicResources::default();

    // CPU: `resourceCpuLimit` ("500m", "2", or a placeholder) since kfp 2.11; `cpuLimit`
    // (a number of cores) before, and still written beside it.
    let cpu = |text_key: &str, number_key: &str| -> Result<Quantity<f64>, IrError> {
        if let Some(s) = r.text(text_key)? {
            return quantity(&s, &r.at(text_key), parse_cpu_quantity);
        }
        match r.f64(number_key)? {
            Some(f) if f < 0.0 => Err(IrError::new(
                r.at(number_key),
                "a CPU amount cannot be negative",
            )),
            Some(f) if f > 0.0 => Ok(Quantity::Constant(f)),
            _ => Ok(Quantity::Absent),
        }
    };
    // Memory: `resourceMemoryLimit` ("4G", "1536Mi", or a placeholder); `memoryLimit` is a
    // number of gigabytes (10^9 bytes: the SDK writes 1536Mi as 1.610612736).
    let memory = |text_key: &str, number_key: &str| -> Result<Quantity<u64>, IrError> {
        if let Some(s) = r.text(text_key)? {
            return quantity(&s, &r.at(text_key), parse_memory_quantity);
        }
        match r.f64(number_key)? {
            Some(gb) if gb < 0.0 => Err(IrError::new(
                r.at(number_key),
                "a memory amount cannot be negative",
            )),
            Some(gb) if gb > 0.0 => {
                let bytes = gb * 1e9;
                if bytes >= u64::MAX as f64 {
                    return Err(IrError::new(
                        r.at(number_key),
                        "the memory amount is too large",
                    ));
                }
                Ok(Quantity::Constant(bytes.round() as u64))
            }
            _ => Ok(Quantity::Absent),
        }
    };
    match cpu("resourceCpuLimit", "cpuLimit")? {
        Quantity::Constant(v) => req.cpu_limit = Some(v),
        Quantity::Input(n) => dynamic.cpu_limit = Some(n),
        Quantity::Absent => {}
    }
    match cpu("resourceCpuRequest", "cpuRequest")? {
        Quantity::Constant(v) => req.cpu_request = Some(v),
        Quantity::Input(n) => dynamic.cpu_request = Some(n),
        Quantity::Absent => {}
    }
    match memory("resourceMemoryLimit", "memoryLimit")? {
        Quantity::Constant(v) => req.memory_limit_bytes = Some(v),
        Quantity::Input(n) => dynamic.memory_limit = Some(n),
        Quantity::Absent => {}
    }
    match memory("resourceMemoryRequest", "memoryRequest")? {
        Quantity::Constant(v) => req.memory_request_bytes = Some(v),
        Quantity::Input(n) => dynamic.memory_request = Some(n),
        Quantity::Absent => {}
    }

    if let Some(acc) = r.child("accelerator")? {
        // `resourceType` / `resourceCount` since kfp 2.11 (placeholders allowed); `type` /
        // `count` before.
        let type_key = if acc.has("resourceType") {
            "resourceType"
        } else {
            "type"
        };
        if let Some(t) = acc.text(type_key)?.filter(|t| !t.trim().is_empty()) {
            match placeholder_input(&t, &acc.at(type_key))? {
                Some(input) => dynamic.accelerator_type = Some(input),
                None => req.accelerator_type = Some(t),
            }
        }
        let count_key = if acc.has("resourceCount") {
            "resourceCount"
        } else {
            "count"
        };
        let count = match acc.get(count_key) {
            None => Quantity::Absent,
            Some(v) => {
                let s = text(v, &acc.at(count_key))?;
                quantity(&s, &acc.at(count_key), parse_accelerator_count)?
            }
        };
        match count {
            Quantity::Constant(n) => req.accelerator_count = n,
            Quantity::Input(n) => dynamic.accelerator_count = Some(n),
            // A type without a count asks for one device.
            Quantity::Absent => {
                if req.accelerator_type.is_some() || dynamic.accelerator_type.is_some() {
                    req.accelerator_count = 1;
                }
            }
        }
    }
    Ok((req, dynamic))
}

fn quantity<T>(
    s: &str,
    path: &str,
    parse: fn(&str) -> Result<T, QuantityError>,
) -> Result<Quantity<T>, IrError> {
    if s.trim().is_empty() {
        return Ok(Quantity::Absent);
    }
    if let Some(input) = placeholder_input(s, path)? {
        return Ok(Quantity::Input(input));
    }
    parse(s)
        .map(Quantity::Constant)
        .map_err(|e| IrError::new(path, e.to_string()))
}

/// `{{$.inputs.parameters['NAME']}}` → `NAME`; other text → `None`; another placeholder is an
/// error (a resource field can only read one input parameter).
fn placeholder_input(s: &str, path: &str) -> Result<Option<String>, IrError> {
    let t = s.trim();
    if !t.contains("{{") {
        return Ok(None);
    }
    let name = t
        .strip_prefix("{{$.inputs.parameters[")
        .and_then(|rest| rest.strip_suffix("]}}"))
        .and_then(|quoted| {
            quoted
                .strip_prefix('\'')
                .and_then(|q| q.strip_suffix('\''))
                .or_else(|| quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')))
        })
        .filter(|n| !n.is_empty() && !n.contains(['\'', '"']));
    match name {
        Some(n) => Ok(Some(n.to_string())),
        None => Err(IrError::new(
            path,
            format!("unsupported placeholder {t:?}: a resource field can be a constant or {{{{$.inputs.parameters['NAME']}}}}"),
        )),
    }
}

fn parse_importer(i: &Obj<'_>) -> Result<ImporterSpec, IrError> {
    let uri = i.req_child("artifactUri")?;
    let artifact_uri = if let Some(c) = uri.text("constant")? {
        ImporterUri::Constant(c)
    } else if let Some(p) = uri.text("runtimeParameter")? {
        ImporterUri::Parameter(p)
    } else if let Some(v) = uri.get("constantValue") {
        match legacy_value(v) {
            Some(Value::String(s)) => ImporterUri::Constant(s),
            _ => {
                return Err(IrError::new(
                    uri.at("constantValue"),
                    "expected {stringValue: URI}",
                ))
            }
        }
    } else {
        return Err(IrError::new(
            uri.path.clone(),
            "an importer's artifactUri needs `constant` or `runtimeParameter`",
        ));
    };
    let (schema_title, schema_version) = artifact_schema(i.child("typeSchema")?)?;
    let metadata = match i.get("metadata") {
        None => JsonMap::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(IrError::wrong_kind(i.at("metadata"), "a mapping", other)),
    };
    Ok(ImporterSpec {
        artifact_uri,
        schema_title,
        schema_version,
        metadata,
        reimport: i.bool("reimport")?.unwrap_or(false),
    })
}
