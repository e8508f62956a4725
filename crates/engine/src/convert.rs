//! JSON <-> Lua with limits: events go in as tables, results come out as JSON. Both directions
//! bound depth and size, so a hostile event or result is a typed error, never a hang or a crash.

use mlua::{Lua, Table, Value};
use serde_json::{Map, Number, Value as Json};

/// Builds the Lua value for a JSON value (`null` becomes nil).
pub(crate) fn to_lua(lua: &Lua, v: &Json, depth: usize, max_depth: usize) -> Result<Value, String> {
    if depth > max_depth {
        return Err(format!("nested deeper than {max_depth} levels"));
    }
    let err = |e: mlua::Error| e.to_string();
    Ok(match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(lua.create_string(s).map_err(err)?),
        Json::Array(items) => {
            let t = lua
                .create_table_with_capacity(items.len(), 0)
                .map_err(err)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item, depth + 1, max_depth)?)
                    .map_err(err)?;
            }
            Value::Table(t)
        }
        Json::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len()).map_err(err)?;
            for (k, item) in map {
                t.raw_set(k.as_str(), to_lua(lua, item, depth + 1, max_depth)?)
                    .map_err(err)?;
            }
            Value::Table(t)
        }
    })
}

pub(crate) struct FromLua {
    pub max_depth: usize,
    pub max_nodes: usize,
    nodes: usize,
    path: Vec<*const std::ffi::c_void>,
}

impl FromLua {
    pub fn new(max_depth: usize, max_nodes: usize) -> Self {
        Self {
            max_depth,
            max_nodes,
            nodes: 0,
            path: Vec::new(),
        }
    }

    /// Converts a script's result. Reads tables raw (no metamethods run).
    pub fn convert(&mut self, v: &Value, at: &str) -> Result<Json, String> {
        self.nodes += 1;
        if self.nodes > self.max_nodes {
            return Err(format!("more than {} values", self.max_nodes));
        }
        Ok(match v {
            Value::Nil => Json::Null,
            Value::Boolean(b) => Json::Bool(*b),
            Value::Integer(i) => Json::Number((*i).into()),
            Value::Number(f) => Json::Number(
                Number::from_f64(*f).ok_or_else(|| format!("{at} is not a finite number"))?,
            ),
            Value::String(s) => Json::String(
                s.to_str()
                    .map_err(|_| format!("{at} is not valid UTF-8"))?
                    .to_string(),
            ),
            Value::Table(t) => self.table(t, at)?,
            other => {
                return Err(format!(
                    "{at} is a {} and cannot be returned",
                    other.type_name()
                ))
            }
        })
    }

    fn table(&mut self, t: &Table, at: &str) -> Result<Json, String> {
        let ptr = t.to_pointer();
        if self.path.contains(&ptr) {
            return Err(format!("{at} refers back to itself (cyclic table)"));
        }
        if self.path.len() >= self.max_depth {
            return Err(format!(
                "{at} is nested deeper than {} levels",
                self.max_depth
            ));
        }
        self.path.push(ptr);
        let mut entries: Vec<(Value, Value)> = Vec::new();
        for pair in t.clone().pairs::<Value, Value>() {
            let pair = pair.map_err(|e| e.to_string())?;
            entries.push(pair);
            if entries.len() > self.max_nodes {
                return Err(format!("{at} has more than {} entries", self.max_nodes));
            }
        }
        let n = entries.len();
        let is_array = n > 0
            && entries
                .iter()
                .all(|(k, _)| matches!(k, Value::Integer(i) if *i >= 1 && (*i as usize) <= n));
        let out = if is_array {
            let mut items = vec![Json::Null; n];
            for (k, v) in &entries {
                if let Value::Integer(i) = k {
                    let idx = *i as usize - 1;
                    items[idx] = self.convert(v, &format!("{at}[{i}]"))?;
                }
            }
            Json::Array(items)
        } else {
            let mut map = Map::new();
            for (k, v) in &entries {
                let key = match k {
                    Value::String(s) => s
                        .to_str()
                        .map_err(|_| format!("a key of {at} is not valid UTF-8"))?
                        .to_string(),
                    Value::Integer(i) => i.to_string(),
                    Value::Number(f) => f.to_string(),
                    Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(format!(
                            "{at} has a {} key; only strings and numbers can be returned",
                            other.type_name()
                        ))
                    }
                };
                let child = format!("{at}.{key}");
                map.insert(key, self.convert(v, &child)?);
            }
            Json::Object(map)
        };
        self.path.pop();
        Ok(out)
    }
}
