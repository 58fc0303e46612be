//! A small JSON Schema checker for the OpenAPI description's response schemas, shared by
//! the collector's OpenAPI tests and the console's browser test (which checks its stand-in
//! answers against the same schemas, so they cannot drift from the real API). Test code
//! only: compiled under `cfg(test)` here and included by path in `tests/tests/console.rs`.

use serde_json::Value;

/// `schema` itself, or what its `$ref` points at (one level).
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|p| root.pointer(p))
        .unwrap_or(schema)
}

/// Where `value` breaks `schema` (a small JSON Schema subset: `$ref`, `type`, `enum`,
/// `const`, `properties`, `required`, `additionalProperties`, `items`, `oneOf`, `anyOf`, `allOf`
/// (the branches' properties and required lists merged, so an object may use all of them)).
pub fn schema_errors(schema: &Value, value: &Value, root: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
            Some(s) => schema_errors(s, value, root, at, out),
            None => out.push(format!("{at}: $ref {r} does not resolve")),
        }
        return;
    }
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        let mut merged = serde_json::Map::new();
        for part in parts {
            let part = resolve(part, root);
            for (k, v) in part.as_object().into_iter().flatten() {
                match (k.as_str(), merged.get_mut(k)) {
                    ("properties", Some(Value::Object(m))) => {
                        m.extend(v.as_object().cloned().unwrap_or_default());
                    }
                    ("required", Some(Value::Array(a))) => {
                        a.extend(v.as_array().cloned().unwrap_or_default());
                    }
                    _ => {
                        merged.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        return schema_errors(&Value::Object(merged), value, root, at, out);
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let fits = types.iter().any(|t| match *t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        });
        if !fits {
            out.push(format!("{at}: {value} is not of type {types:?}"));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {e:?}"));
    }
    if let Some(c) = schema.get("const")
        && c != value
    {
        out.push(format!("{at}: {value} is not {c}"));
    }
    for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array) {
            let fitting = alts
                .iter()
                .filter(|alt| {
                    let mut e = Vec::new();
                    schema_errors(alt, value, root, at, &mut e);
                    e.is_empty()
                })
                .count();
            if fitting == 0 || (exactly_one && fitting > 1) {
                out.push(format!(
                    "{at}: {value} fits {fitting} of the {key} alternatives"
                ));
            }
        }
    }
    if let Some(obj) = value.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = r.as_str()
                && !obj.contains_key(r)
            {
                out.push(format!("{at}: lacks required {r}"));
            }
        }
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => schema_errors(s, v, root, &format!("{at}.{k}"), out),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => out.push(format!("{at}: unexpected property {k}")),
                    Some(s @ Value::Object(_)) => {
                        schema_errors(s, v, root, &format!("{at}.{k}"), out)
                    }
                    // Unlisted properties of an object with listed ones are a spec gap.
                    _ if props.is_some() => out.push(format!("{at}: undocumented property {k}")),
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(a)) = (schema.get("items"), value.as_array()) {
        for (i, v) in a.iter().enumerate() {
            schema_errors(items, v, root, &format!("{at}[{i}]"), out);
        }
    }
}
