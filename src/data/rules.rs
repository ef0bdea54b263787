//! Target-group rules: a JSON tree compiled to a parameterised SQL predicate over `recipients r`.
//!
//! ```json
//! {"all": [ {"field": "city", "op": "eq", "value": "Berlin"},
//!           {"not": {"list": 3, "status": "opt_out"}},
//!           {"any": [ {"field": "email", "op": "contains", "value": "@example.org"},
//!                     {"field": "age", "op": "ge", "value": 18} ]} ]}
//! ```
//!
//! Nothing from the rule is spliced into the SQL text: a field name is looked up in the tenant's [`Schema`] and
//! the schema's (quoted) column name is used; an operator selects a fixed SQL fragment; every value is a bound
//! parameter with an explicit cast to the field's type. Values are type-checked against the field first, so a
//! wrong type is a 400 naming the field, not a database error. Size limits keep a rule cheap to plan.
//!
//! Logic is two-valued: `not` treats an unknown (NULL) comparison as false before negating, so `not (city = X)`
//! and `city ne X` both include recipients without a city.

use deadpool_postgres::tokio_postgres::types::{ToSql, Type};
use serde_json::Value as Json;

use super::lists::BindingStatus;
use super::schema::{Field, FieldType, Schema, Value, truncate};

/// Deepest nesting of `all` / `any` / `not`.
pub const MAX_DEPTH: usize = 12;
/// Most nodes (conditions and combinators) in one rule.
pub const MAX_NODES: usize = 200;
/// Most values in one `in` list.
pub const MAX_IN_VALUES: usize = 1000;

/// A compiled rule: `sql` uses `$1..$n`, `params` are their values, each with the type its placeholder is cast to
/// (so a statement can be parsed, bound and run in one round trip: [`Compiled::typed_params`]).
pub struct Compiled {
    pub sql: String,
    pub params: Vec<super::TypedParam>,
    /// The fields the rule reads (for access control: personal fields need the private-data right).
    pub fields: Vec<String>,
    /// The mailing lists the rule refers to.
    pub lists: Vec<i64>,
}

impl Compiled {
    /// The parameters as the slice tokio-postgres takes.
    pub fn param_refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|(p, _)| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }

    /// The parameters with their types, as `Client::query_typed` takes them.
    pub fn typed_params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        super::typed_refs(&self.params)
    }

    /// A further parameter after the rule's own ones, of PostgreSQL type `ty` (the type its placeholder is cast
    /// to where the statement uses it); returns its placeholder.
    pub fn push(&mut self, value: Box<dyn ToSql + Sync + Send>, ty: Type) -> String {
        self.params.push((value, ty));
        format!("${}", self.params.len())
    }
}

/// A predicate that holds for every recipient (no filter).
pub fn always() -> Compiled {
    Compiled {
        sql: "TRUE".into(),
        params: Vec::new(),
        fields: Vec::new(),
        lists: Vec::new(),
    }
}

/// A predicate that holds for no recipient (an inner client's scope without a rule).
pub fn never() -> Compiled {
    Compiled {
        sql: "FALSE".into(),
        ..always()
    }
}

/// Equality filters (`field=value` query parameters) as one compiled predicate: values are parsed from text by
/// each field's type, then compiled like the rule `{"all": [{"field": f, "op": "eq", "value": v}, ...]}`.
pub fn equalities(filters: &[(String, String)], schema: &Schema) -> Result<Compiled, String> {
    let mut conditions = Vec::with_capacity(filters.len());
    for (name, text) in filters {
        let field = schema
            .get(name)
            .ok_or_else(|| format!("unknown field {:?}", truncate(name)))?;
        let value = field.parse_text(text).map_err(|e| format!("{name}: {e}"))?;
        let condition = if value.is_null() {
            serde_json::json!({"field": name, "op": "is_null"})
        } else {
            serde_json::json!({"field": name, "op": "eq", "value": value.to_json()})
        };
        conditions.push(condition);
    }
    compile(&serde_json::json!({"all": conditions}), schema)
}

/// Withholds the values of conditions on personal fields in a stored rule (one written by someone with the
/// private-data right can hold an e-mail address): `value` becomes null and the condition gets `"_masked": true`.
/// Returns whether anything was withheld.
pub fn mask_personal_values(rule: &mut Json, is_personal: &dyn Fn(&str) -> bool) -> bool {
    match rule {
        Json::Object(node) => {
            let personal = node.get("field").and_then(Json::as_str).map(is_personal);
            match personal {
                Some(true) if node.contains_key("value") => {
                    node.insert("value".into(), Json::Null);
                    node.insert("_masked".into(), Json::Bool(true));
                    true
                }
                Some(_) => false,
                None => {
                    let mut masked = false;
                    for (key, child) in node.iter_mut() {
                        if matches!(key.as_str(), "all" | "any" | "not") {
                            masked |= mask_personal_values(child, is_personal);
                        }
                    }
                    masked
                }
            }
        }
        Json::Array(children) => children.iter_mut().fold(false, |masked, child| {
            mask_personal_values(child, is_personal) | masked
        }),
        _ => false,
    }
}

/// Compiles `rule` against the tenant's schema. The error message is for the caller.
pub fn compile(rule: &Json, schema: &Schema) -> Result<Compiled, String> {
    let mut compiler = Compiler {
        schema,
        out: Compiled {
            sql: String::new(),
            params: Vec::new(),
            fields: Vec::new(),
            lists: Vec::new(),
        },
        nodes: 0,
    };
    let sql = compiler.node(rule, 0, "rule")?;
    compiler.out.sql = sql;
    Ok(compiler.out)
}

struct Compiler<'a> {
    schema: &'a Schema,
    out: Compiled,
    nodes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    StartsWith,
    In,
    IsNull,
    NotNull,
}

impl Op {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "lt" => Self::Lt,
            "le" => Self::Le,
            "gt" => Self::Gt,
            "ge" => Self::Ge,
            "contains" => Self::Contains,
            "starts_with" => Self::StartsWith,
            "in" => Self::In,
            "is_null" => Self::IsNull,
            "not_null" => Self::NotNull,
            _ => return None,
        })
    }
}

impl Compiler<'_> {
    fn node(&mut self, node: &Json, depth: usize, at: &str) -> Result<String, String> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(format!("the rule has more than {MAX_NODES} nodes"));
        }
        if depth > MAX_DEPTH {
            return Err(format!("the rule is nested deeper than {MAX_DEPTH} levels"));
        }
        let Json::Object(object) = node else {
            return Err(format!("{at}: must be an object"));
        };
        let only = |allowed: &[&str]| match object.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(format!("{at}: unexpected key {:?}", truncate(k))),
            None => Ok(()),
        };
        if let Some(children) = object.get("all").or_else(|| object.get("any")) {
            let all = object.contains_key("all");
            let key = if all { "all" } else { "any" };
            only(&[key])?;
            let Json::Array(children) = children else {
                return Err(format!("{at}.{key}: must be an array of rules"));
            };
            if children.is_empty() {
                return Err(format!("{at}.{key}: needs at least one rule"));
            }
            let parts = children
                .iter()
                .enumerate()
                .map(|(i, child)| self.node(child, depth + 1, &format!("{at}.{key}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let joiner = if all { " AND " } else { " OR " };
            return Ok(format!("({})", parts.join(joiner)));
        }
        if let Some(child) = object.get("not") {
            only(&["not"])?;
            let inner = self.node(child, depth + 1, &format!("{at}.not"))?;
            return Ok(format!("(NOT coalesce({inner}, false))"));
        }
        if let Some(list) = object.get("list") {
            only(&["list", "status"])?;
            return self.list(list, object.get("status"), at);
        }
        if object.contains_key("field") {
            only(&["field", "op", "value"])?;
            return self.condition(object, at);
        }
        Err(format!(
            "{at}: must have one of \"all\", \"any\", \"not\", \"field\" or \"list\""
        ))
    }

    fn list(&mut self, list: &Json, status: Option<&Json>, at: &str) -> Result<String, String> {
        let id = list
            .as_i64()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("{at}.list: must be a mailing list id"))?;
        self.out.lists.push(id);
        let list = self.out.push(Box::new(id), Type::INT8);
        match status {
            None | Some(Json::Null) => Ok(format!(
                "EXISTS (SELECT 1 FROM bindings b WHERE b.recipient_id = r.id AND b.mailing_list_id = {list}::int8)"
            )),
            Some(status) => {
                let status: BindingStatus = serde_json::from_value(status.clone()).map_err(|_| {
                    format!(
                        "{at}.status: must be one of active, opt_out, bounced, blocked, pending_confirmation"
                    )
                })?;
                let status = self.out.push(Box::new(status.as_str()), Type::TEXT);
                Ok(format!(
                    "EXISTS (SELECT 1 FROM bindings b WHERE b.recipient_id = r.id AND b.mailing_list_id = {list}::int8 AND b.status = {status}::text)"
                ))
            }
        }
    }

    fn condition(
        &mut self,
        object: &serde_json::Map<String, Json>,
        at: &str,
    ) -> Result<String, String> {
        let name = object
            .get("field")
            .and_then(Json::as_str)
            .ok_or_else(|| format!("{at}.field: must be a field name"))?;
        let field = self
            .schema
            .get(name)
            .ok_or_else(|| format!("{at}.field: unknown field {:?}", truncate(name)))?;
        let op_name = object
            .get("op")
            .and_then(Json::as_str)
            .ok_or_else(|| format!("{at}.op: must be an operator"))?;
        let op = Op::parse(op_name).ok_or_else(|| {
            format!(
                "{at}.op: unknown operator {:?}; use eq, ne, lt, le, gt, ge, contains, starts_with, in, is_null or not_null",
                truncate(op_name)
            )
        })?;
        if !self.out.fields.contains(&field.name) {
            self.out.fields.push(field.name.clone());
        }
        let value = object.get("value");
        let column = format!("r.{}", field.column());
        let text = matches!(field.ty, FieldType::Text { .. });
        // E-mail addresses compare case-insensitively, as their unique index does.
        let folded = field.name == "email";
        // The stored lower-case address where it is filled in: `=` and ranges on it are leakproof, so an index
        // serves them under an inner client's row-level security too.
        let stored_lower = folded && self.schema.email_lower;
        let lhs = if stored_lower {
            "r.mandant_email_lower".to_owned()
        } else if folded {
            format!("lower({column})")
        } else {
            column.clone()
        };
        let here = format!("{at} ({})", field.name);
        match op {
            Op::IsNull | Op::NotNull => {
                if value.is_some() {
                    return Err(format!("{here}: {op_name} takes no value"));
                }
                let not = if op == Op::NotNull { " NOT" } else { "" };
                Ok(format!("({column} IS{not} NULL)"))
            }
            Op::Contains | Op::StartsWith => {
                if !text {
                    return Err(format!("{here}: {op_name} needs a text field"));
                }
                let fragment = value
                    .and_then(Json::as_str)
                    .filter(|s| !s.is_empty() && s.chars().count() <= 4000)
                    .ok_or_else(|| format!("{here}: value must be a non-empty string"))?;
                // No stored text has them (values are refused with them), and PostgreSQL refuses a NUL.
                if fragment.chars().any(char::is_control) {
                    return Err(format!("{here}: value must not contain control characters"));
                }
                let p = self.out.push(Box::new(fragment.to_lowercase()), Type::TEXT);
                Ok(if op == Op::Contains {
                    format!("(strpos(lower({column}), {p}::text) > 0)")
                } else if stored_lower {
                    // The pattern operators compare bytewise, as the index (text_pattern_ops) is ordered; every
                    // string starting with p sorts between p and p followed by the highest code point.
                    format!("({lhs} ~>=~ {p}::text AND {lhs} ~<~ ({p}::text || chr(1114111)))")
                } else {
                    format!("starts_with(lower({column}), {p}::text)")
                })
            }
            Op::In => {
                let Some(Json::Array(items)) = value else {
                    return Err(format!("{here}: in needs an array of values"));
                };
                if items.is_empty() || items.len() > MAX_IN_VALUES {
                    return Err(format!("{here}: in needs 1 to {MAX_IN_VALUES} values"));
                }
                let values = items
                    .iter()
                    .map(|v| operand(field, v, &here, folded))
                    .collect::<Result<Vec<_>, _>>()?;
                let p = self
                    .out
                    .push(array_param(field.ty, values), field.ty.pg_array_type());
                Ok(format!("({lhs} = ANY({p}::{}[]))", field.ty.sql_type()))
            }
            Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                if !matches!(op, Op::Eq | Op::Ne) && !field.ty.is_ordered() {
                    return Err(format!("{here}: {op_name} does not apply to a boolean"));
                }
                let value = value.ok_or_else(|| format!("{here}: {op_name} needs a value"))?;
                let value = operand(field, value, &here, folded)?;
                let p = self.out.push(value.as_param(), field.ty.pg_type());
                let rhs = format!("{p}::{}", field.ty.sql_type());
                let sql_op = match op {
                    Op::Eq => "=",
                    Op::Ne => "IS DISTINCT FROM",
                    Op::Lt => "<",
                    Op::Le => "<=",
                    Op::Gt => ">",
                    _ => ">=",
                };
                Ok(format!("({lhs} {sql_op} {rhs})"))
            }
        }
    }
}

/// A comparison value, type-checked against the field (never null: `is_null` says that).
fn operand(field: &Field, value: &Json, at: &str, folded: bool) -> Result<Value, String> {
    if value.is_null() {
        return Err(format!(
            "{at}: value must not be null; use is_null or not_null"
        ));
    }
    match field.parse_json(value) {
        Ok(Value::Text(s)) if folded => Ok(Value::Text(s.to_lowercase())),
        Ok(Value::Null) => Err(format!("{at}: value must not be empty")),
        Ok(v) => Ok(v),
        Err(reason) => Err(format!("{at}: value {reason}")),
    }
}

/// The values of an `in` list as one typed array parameter.
fn array_param(ty: FieldType, values: Vec<Value>) -> Box<dyn ToSql + Sync + Send> {
    macro_rules! collect {
        ($variant:ident) => {
            Box::new(
                values
                    .into_iter()
                    .filter_map(|v| match v {
                        Value::$variant(x) => Some(x),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )
        };
    }
    match ty {
        FieldType::Text { .. } => collect!(Text),
        FieldType::Integer => collect!(Integer),
        FieldType::Number => collect!(Number),
        FieldType::Boolean => collect!(Boolean),
        FieldType::Date => collect!(Date),
        FieldType::Timestamp => collect!(Timestamp),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sql(rule: Json) -> Result<String, String> {
        compile(&rule, &Schema::standard()).map(|c| c.sql)
    }

    #[test]
    fn personal_values_are_withheld_at_any_depth_and_others_kept() {
        let mut rule = json!({"all": [
            {"not": {"any": [{"field": "last_name", "op": "in", "value": ["Alt", "Bert"]}]}},
            {"field": "gender", "op": "eq", "value": "f"},
            {"field": "email", "op": "not_null"}
        ]});
        let schema = Schema::standard();
        let personal = |name: &str| schema.get(name).is_some_and(|f| f.personal);
        assert!(mask_personal_values(&mut rule, &personal));
        assert_eq!(
            rule,
            json!({"all": [
                {"not": {"any": [{"field": "last_name", "op": "in", "value": null, "_masked": true}]}},
                {"field": "gender", "op": "eq", "value": "f"},
                {"field": "email", "op": "not_null"}
            ]})
        );
        let mut plain = json!({"field": "gender", "op": "eq", "value": "f"});
        assert!(!mask_personal_values(&mut plain, &personal));
    }

    #[test]
    fn a_nested_rule_compiles_to_placeholders_only() {
        let compiled = compile(
            &json!({"all": [
                {"field": "first_name", "op": "eq", "value": "Anna'; DROP TABLE recipients; --"},
                {"not": {"list": 3, "status": "opt_out"}},
                {"any": [{"field": "email", "op": "contains", "value": "@Example.org"},
                         {"field": "id", "op": "in", "value": [1, 2]}]}
            ]}),
            &Schema::standard(),
        )
        .unwrap();
        assert_eq!(
            compiled.sql,
            "((r.\"first_name\" = $1::text) AND (NOT coalesce(EXISTS (SELECT 1 FROM bindings b WHERE \
             b.recipient_id = r.id AND b.mailing_list_id = $2::int8 AND b.status = $3::text), false)) AND \
             ((strpos(lower(r.\"email\"), $4::text) > 0) OR (r.\"id\" = ANY($5::int8[]))))"
        );
        assert_eq!(compiled.params.len(), 5);
        assert_eq!(compiled.lists, vec![3]);
        assert_eq!(compiled.fields, vec!["first_name", "email", "id"]);
    }

    #[test]
    fn hostile_or_wrong_rules_are_refused_with_their_position() {
        let cases = [
            (
                json!({"field": "email\"; drop table x; --", "op": "eq", "value": 1}),
                "unknown field",
            ),
            (
                json!({"field": "id", "op": "eq) OR (1=1", "value": 1}),
                "unknown operator",
            ),
            (
                json!({"field": "id", "op": "eq", "value": "1"}),
                "whole number",
            ),
            (
                json!({"field": "id", "op": "contains", "value": "1"}),
                "needs a text field",
            ),
            (
                json!({"field": "id", "op": "is_null", "value": 1}),
                "takes no value",
            ),
            (
                json!({"field": "gender", "op": "eq", "value": null}),
                "use is_null",
            ),
            (json!({"all": []}), "at least one rule"),
            (
                json!({"all": [{"field": "id", "op": "eq", "value": 1, "x": 1}]}),
                "rule.all[0]: unexpected key",
            ),
            (json!({"list": "1"}), "mailing list id"),
            (json!({"list": 1, "status": "gone"}), "must be one of"),
            (json!([1]), "must be an object"),
            (
                json!({"field": "created_at", "op": "gt", "value": "yesterday"}),
                "timestamp like",
            ),
        ];
        for (rule, expected) in cases {
            let error = sql(rule.clone()).unwrap_err();
            assert!(error.contains(expected), "{rule}: {error}");
        }
    }

    #[test]
    fn size_limits_hold() {
        let mut deep = json!({"field": "id", "op": "not_null"});
        for _ in 0..=MAX_DEPTH {
            deep = json!({"not": deep});
        }
        assert!(sql(deep).unwrap_err().contains("nested deeper"));
        let wide = json!({"any": vec![json!({"field": "id", "op": "not_null"}); MAX_NODES + 1]});
        assert!(sql(wide).unwrap_err().contains("nodes"));
        let many = json!({"field": "id", "op": "in", "value": vec![1; MAX_IN_VALUES + 1]});
        assert!(sql(many).unwrap_err().contains("1 to"));
    }

    mod properties {
        //! Any JSON tree either compiles, with exactly one bound parameter per placeholder and no value in the
        //! SQL text, or is refused with a message naming a position; the compiler never panics.
        use proptest::prelude::*;
        use serde_json::{Value as Json, json};

        use super::super::*;
        use crate::data::schema::{Field, FieldType, Schema};

        /// Every string value carries this marker, which no SQL fragment of the compiler contains.
        const MARK: char = '\u{2603}';

        fn schema() -> Schema {
            Schema::standard()
                .with(Field::custom("city", FieldType::Text { max: 40 }, false))
                .with(Field::custom("age", FieldType::Integer, false))
                .with(Field::custom("score", FieldType::Number, false))
                .with(Field::custom("vip", FieldType::Boolean, false))
                .with(Field::custom("born", FieldType::Date, false))
                .with(Field::custom("seen_at", FieldType::Timestamp, false))
        }

        const FIELDS: &[&str] = &[
            "email",
            "first_name",
            "gender",
            "id",
            "created_at",
            "city",
            "age",
            "score",
            "vip",
            "born",
            "seen_at",
            "nope",
            "r.id; --",
        ];
        const OPS: &[&str] = &[
            "eq",
            "ne",
            "lt",
            "le",
            "gt",
            "ge",
            "contains",
            "starts_with",
            "in",
            "is_null",
            "not_null",
            "like",
        ];

        pub(crate) fn value() -> impl Strategy<Value = Json> {
            let scalar = prop_oneof![
                Just(Json::Null),
                any::<bool>().prop_map(Json::from),
                any::<i64>().prop_map(Json::from),
                any::<f64>().prop_map(|f| json!(f)),
                "[ -~]{0,12}".prop_map(|s| Json::from(format!("{MARK}{s}"))),
                "[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}".prop_map(|s| Json::from(format!("{MARK}{s}"))),
                Just(Json::from("2026-11-23")),
                Just(Json::from("-5000-01-01")),
                Just(Json::from("+20000-01-01")),
                Just(Json::from("2026-11-23T10:00:00Z")),
                Just(Json::from("a\u{0}b")),
                Just(Json::from("x@example.org")),
            ];
            prop_oneof![
                4 => scalar.clone(),
                1 => proptest::collection::vec(scalar, 0..4).prop_map(Json::from),
            ]
        }

        pub(crate) fn rule() -> impl Strategy<Value = Json> {
            let leaf = prop_oneof![
                (
                    proptest::sample::select(FIELDS),
                    proptest::sample::select(OPS),
                    proptest::option::of(value())
                )
                    .prop_map(|(field, op, value)| {
                        let mut node = json!({"field": field, "op": op});
                        if let Some(value) = value {
                            node["value"] = value;
                        }
                        node
                    }),
                (any::<i64>(), proptest::option::of("[a-z_]{0,12}"))
                    .prop_map(|(list, status)| json!({"list": list, "status": status})),
                value(),
            ];
            leaf.prop_recursive(5, 40, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(|v| json!({"all": v})),
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(|v| json!({"any": v})),
                    inner.clone().prop_map(|v| json!({"not": v})),
                    (inner.clone(), inner).prop_map(|(a, b)| json!({"all": [a], "not": b})),
                ]
            })
        }

        fn placeholders(sql: &str) -> usize {
            (1..=sql.len())
                .take_while(|n| sql.contains(&format!("${n}")))
                .count()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_tree_compiles_to_bound_parameters_or_is_refused_naming_a_position(rule in rule()) {
                match compile(&rule, &schema()) {
                    Ok(compiled) => {
                        prop_assert!(!compiled.sql.contains(MARK), "a value reached the SQL: {}", compiled.sql);
                        prop_assert!(!compiled.sql.contains(';') && !compiled.sql.contains("--"));
                        prop_assert_eq!(placeholders(&compiled.sql), compiled.params.len());
                        // Every value is of the type its parameter is declared as (`query_typed` binds it so).
                        for (value, ty) in &compiled.params {
                            let mut buffer = bytes::BytesMut::new();
                            prop_assert!(value.to_sql_checked(ty, &mut buffer).is_ok(), "{:?} as {}", value, ty);
                        }
                    }
                    Err(message) => {
                        prop_assert!(message.starts_with("rule") || message.starts_with("the rule"), "{}", message);
                    }
                }
            }

            #[test]
            fn arbitrary_json_never_panics_the_compiler(text in "[\\[\\]{}:,\"a-z0-9 .-]{0,80}") {
                if let Ok(rule) = serde_json::from_str::<Json>(&text) {
                    let _ = compile(&rule, &schema());
                }
            }
        }

        /// Regression cases proptest found: control characters in a `contains` fragment, and dates outside
        /// what PostgreSQL can store, reached the database as errors instead of a 400.
        #[test]
        fn fragments_with_control_characters_and_dates_out_of_range_are_refused() {
            for rule in [
                json!({"field": "city", "op": "contains", "value": "a\u{0}b"}),
                json!({"field": "city", "op": "starts_with", "value": "\u{1b}"}),
                json!({"field": "born", "op": "eq", "value": "-5000-01-01"}),
                json!({"field": "born", "op": "in", "value": ["+20000-01-01"]}),
            ] {
                assert!(compile(&rule, &schema()).is_err(), "{rule}");
            }
        }
    }
}
