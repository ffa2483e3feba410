//! The structure of a state's rows, recorded once per state and compared at restore.
//!
//! postcard does not describe what it writes: `i64` bytes read back as `u64`, or a struct whose
//! fields changed type, can decode without an error and give wrong values. The structure is traced
//! from the type's serde `Deserialize` (serde-reflection) and written without names: renaming a
//! type or a field keeps its rows readable, changing what is written does not.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::de::DeserializeOwned;
use serde_reflection::{ContainerFormat, Format, Named, Registry, Tracer, TracerConfig, VariantFormat};

/// The shape of a type serde cannot trace (one that asks the data what it is, as untagged enums
/// do): no check is made for it.
pub(super) const UNKNOWN: &str = "?";

/// The structure of `T`'s postcard rows, or [`UNKNOWN`].
pub(crate) fn shape<T: DeserializeOwned>() -> String {
    // A pass traces one variant of each enum inside the type. An enum marked incomplete is traced
    // again until all its variants are seen; enums found only in a later variant send the tracing
    // round once more, knowing their names.
    let mut enums: Vec<String> = Vec::new();
    for _ in 0..8 {
        let mut tracer = Tracer::new(TracerConfig::default());
        let mut format = None;
        for _ in 0..256 {
            match tracer.trace_simple_type::<T>() {
                Ok((f, _)) => format = Some(f),
                Err(_) => return UNKNOWN.into(),
            }
            let mut incomplete = false;
            for name in &enums {
                incomplete |= tracer.check_incomplete_enum(name).is_some();
            }
            if !incomplete {
                break;
            }
        }
        let Some(format) = format else { return UNKNOWN.into() };
        match tracer.registry() {
            Ok(registry) => {
                let mut out = String::new();
                render(&format, &registry, &mut Vec::new(), &mut out);
                return out;
            }
            Err(serde_reflection::Error::MissingVariants(more))
                if more.iter().any(|m| !enums.contains(m)) =>
            {
                enums.extend(more);
            }
            Err(_) => return UNKNOWN.into(),
        }
    }
    UNKNOWN.into()
}

/// Two recorded shapes can read each other's rows (an unknown one is not checked).
pub(super) fn compatible(stored: &str, declared: &str) -> bool {
    stored == UNKNOWN || declared == UNKNOWN || stored == declared
}

fn render(f: &Format, reg: &Registry, stack: &mut Vec<String>, out: &mut String) {
    match f {
        Format::TypeName(name) => {
            // A type that contains itself is written once, then referred to.
            if let Some(depth) = stack.iter().position(|n| n == name) {
                let _ = write!(out, "rec{depth}");
                return;
            }
            match reg.get(name) {
                Some(c) => {
                    stack.push(name.clone());
                    container(c, reg, stack, out);
                    stack.pop();
                }
                None => out.push_str(UNKNOWN),
            }
        }
        Format::Option(inner) => wrap("opt", &[inner], reg, stack, out),
        Format::Seq(inner) => wrap("seq", &[inner], reg, stack, out),
        Format::Map { key, value } => wrap("map", &[key, value], reg, stack, out),
        Format::Tuple(items) => list("tup", items, reg, stack, out),
        Format::TupleArray { content, size } => wrap(&format!("arr{size}"), &[content], reg, stack, out),
        Format::Variable(_) => out.push_str(UNKNOWN),
        // Spelled out here, not taken from `Debug`: stored rows must not change with the crate.
        Format::Unit => out.push_str("Unit"),
        Format::Bool => out.push_str("Bool"),
        Format::I8 => out.push_str("I8"),
        Format::I16 => out.push_str("I16"),
        Format::I32 => out.push_str("I32"),
        Format::I64 => out.push_str("I64"),
        Format::I128 => out.push_str("I128"),
        Format::U8 => out.push_str("U8"),
        Format::U16 => out.push_str("U16"),
        Format::U32 => out.push_str("U32"),
        Format::U64 => out.push_str("U64"),
        Format::U128 => out.push_str("U128"),
        Format::F32 => out.push_str("F32"),
        Format::F64 => out.push_str("F64"),
        Format::Char => out.push_str("Char"),
        Format::Str => out.push_str("Str"),
        Format::Bytes => out.push_str("Bytes"),
    }
}

fn wrap(tag: &str, items: &[&Format], reg: &Registry, stack: &mut Vec<String>, out: &mut String) {
    out.push_str(tag);
    out.push('(');
    for (i, f) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        render(f, reg, stack, out);
    }
    out.push(')');
}

fn list(tag: &str, items: &[Format], reg: &Registry, stack: &mut Vec<String>, out: &mut String) {
    wrap(tag, &items.iter().collect::<Vec<_>>(), reg, stack, out);
}

fn fields(tag: &str, items: &[Named<Format>], reg: &Registry, stack: &mut Vec<String>, out: &mut String) {
    wrap(tag, &items.iter().map(|n| &n.value).collect::<Vec<_>>(), reg, stack, out);
}

fn container(c: &ContainerFormat, reg: &Registry, stack: &mut Vec<String>, out: &mut String) {
    match c {
        ContainerFormat::UnitStruct => out.push_str("unit"),
        // postcard writes a newtype as what it wraps.
        ContainerFormat::NewTypeStruct(inner) => render(inner, reg, stack, out),
        ContainerFormat::TupleStruct(items) => list("tup", items, reg, stack, out),
        ContainerFormat::Struct(items) => fields("tup", items, reg, stack, out),
        ContainerFormat::Enum(variants) => variants_of(variants, reg, stack, out),
    }
}

fn variants_of(
    variants: &BTreeMap<u32, Named<VariantFormat>>,
    reg: &Registry,
    stack: &mut Vec<String>,
    out: &mut String,
) {
    out.push_str("enum(");
    for (i, (index, v)) in variants.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{index}:");
        match &v.value {
            VariantFormat::Unit => out.push_str("unit"),
            VariantFormat::NewType(inner) => render(inner, reg, stack, out),
            VariantFormat::Tuple(items) => list("tup", items, reg, stack, out),
            VariantFormat::Struct(items) => fields("tup", items, reg, stack, out),
            VariantFormat::Variable(_) => out.push_str(UNKNOWN),
        }
    }
    out.push(')');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Login {
        at: i64,
        ok: bool,
        how: Method,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Renamed {
        when: i64,
        success: bool,
        method: Method,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    enum Method {
        Password,
        Token(String),
        Sso { provider: String },
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    enum Tree {
        Leaf(i64),
        Node(Vec<Tree>),
    }

    #[test]
    fn a_type_that_contains_itself_is_written_once() {
        assert_eq!(shape::<Tree>(), "enum(0:I64,1:seq(rec0))");
    }

    #[test]
    fn a_changed_type_changes_the_shape_and_a_renamed_one_does_not() {
        assert_ne!(shape::<i64>(), shape::<u64>());
        assert_ne!(shape::<Vec<i64>>(), shape::<Vec<i32>>());
        assert_eq!(shape::<Login>(), shape::<Renamed>(), "names are not written");
        assert_ne!(shape::<Login>(), shape::<(i64, bool)>());
        assert!(shape::<Login>().contains("enum(0:unit,1:Str,2:tup(Str))"), "{}", shape::<Login>());
        assert_eq!(shape::<serde_json::Value>(), UNKNOWN, "asks the data what it is");
        assert!(compatible(UNKNOWN, &shape::<i64>()));
        assert!(!compatible(&shape::<i64>(), &shape::<u64>()));
    }
}
