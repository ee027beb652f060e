//! Small conversions between Rust values and plain JS objects.

use js_sys::{Object, Reflect};
use wasm_bindgen::prelude::*;

/// Builds a plain JS object from `(key, value)` pairs.
pub fn object(pairs: &[(&str, JsValue)]) -> JsValue {
    let object = Object::new();
    for (key, value) in pairs {
        // Setting a property on a fresh plain object cannot throw.
        let _ = Reflect::set(&object, &JsValue::from_str(key), value);
    }
    object.into()
}

/// Reads a number property. Returns `Ok(None)` when the property is absent or undefined
/// and an error naming it when it is present but not a finite number.
pub fn number(options: &JsValue, key: &str) -> Result<Option<f64>, String> {
    let value = Reflect::get(options, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED);
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    match value.as_f64() {
        Some(number) if number.is_finite() => Ok(Some(number)),
        _ => Err(format!(
            "option {key} must be a finite number, got {value:?}"
        )),
    }
}

/// Reads a whole-number property within `0..=max`, as [`number`] does.
pub fn whole_number(options: &JsValue, key: &str, max: f64) -> Result<Option<u64>, String> {
    match number(options, key)? {
        None => Ok(None),
        Some(n) if n.fract() == 0.0 && (0.0..=max).contains(&n) => Ok(Some(n as u64)),
        Some(n) => Err(format!(
            "option {key} must be a whole number from 0 to {max}, got {n}"
        )),
    }
}

/// Reads a boolean property; absent means `default`.
pub fn boolean(options: &JsValue, key: &str, default: bool) -> bool {
    let value = Reflect::get(options, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED);
    value.as_bool().unwrap_or(default)
}
