//! CEL expressions (`filter`, `map`, `key_by.expr`): bounded in size and depth before
//! parsing, parsed, and checked against the fields the row has at that step.

use super::rules::field_names;
use crate::pipeline::plan::Expr;
use crate::pipeline::problems::Problems;
use crate::schema::{FieldType, Kind};
use cel_interpreter::Program;

/// The longest CEL expression, and its deepest bracket nesting: the parser recurses per
/// level, so a deep expression could exhaust the stack.
pub const MAX_EXPR_BYTES: usize = 4096;
pub const MAX_EXPR_DEPTH: usize = 32;

pub(super) fn expr_too_big(text: &str) -> Option<String> {
    if text.len() > MAX_EXPR_BYTES {
        return Some(format!("{} bytes long", text.len()));
    }
    let (mut depth, mut quote, mut escaped) = (0usize, None::<char>, false);
    for c in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' | '{' => {
                    depth += 1;
                    if depth > MAX_EXPR_DEPTH {
                        return Some(format!("nested more than {MAX_EXPR_DEPTH} brackets deep"));
                    }
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    None
}

pub(super) fn compile_expr(
    p: &mut Problems,
    path: &str,
    text: &str,
    row: &[(String, FieldType)],
) -> Option<Expr> {
    if let Some(why) = expr_too_big(text) {
        p.add(
            path,
            format!("the CEL expression is {why}"),
            format!("write a shorter expression (at most {MAX_EXPR_BYTES} bytes, {MAX_EXPR_DEPTH} levels of brackets)"),
        );
        return None;
    }
    // cel-parser's ANTLR runtime panics on some malformed input (fuzzing found
    // `page !=<<<<…< '/health'`): a definition must get a problem, never a crash.
    let compiled = std::panic::catch_unwind(|| Program::compile(text));
    let program = match compiled {
        Err(_) => {
            p.add(
                path,
                format!("invalid CEL expression `{text}`: the CEL parser cannot read it"),
                "see https://github.com/google/cel-spec for the syntax; field names are variables",
            );
            return None;
        }
        Ok(Ok(prog)) => prog,
        Ok(Err(e)) => {
            let msg = e.to_string().lines().next().unwrap_or_default().to_string();
            p.add(
                path,
                format!("invalid CEL expression `{text}`: {msg}"),
                "see https://github.com/google/cel-spec for the syntax; field names are variables",
            );
            return None;
        }
    };
    // Macros (`exists`, `all`, `map`, `filter`, ...) bind their own loop variables.
    let mut bound = std::collections::HashSet::new();
    if let Ok(ast) = cel_parser::Parser::new().parse(text) {
        comprehension_vars(&ast, &mut bound);
    }
    let mut vars = Vec::new();
    let mut ok = true;
    let mut referenced = program
        .references()
        .variables()
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    referenced.sort();
    for v in referenced.into_iter().filter(|v| !bound.contains(v)) {
        match row.iter().position(|(n, _)| *n == v) {
            Some(i) => vars.push((v, i)),
            None => {
                ok = false;
                p.add(
                    path,
                    format!("unknown field `{v}` in expression `{text}`"),
                    format!("use one of the fields available here: {}", field_names(row)),
                );
            }
        }
    }
    ok.then(|| Expr {
        text: text.to_string(),
        program,
        vars,
    })
}

/// The variables that comprehensions (CEL macros) bind inside an expression.
pub(super) fn comprehension_vars(
    e: &cel_parser::Expression,
    out: &mut std::collections::HashSet<String>,
) {
    use cel_parser::ast::{EntryExpr, Expr as E};
    match &e.expr {
        E::Comprehension(c) => {
            out.insert(c.iter_var.clone());
            out.extend(c.iter_var2.clone());
            out.insert(c.accu_var.clone());
            for x in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                comprehension_vars(x, out);
            }
        }
        E::Call(c) => {
            if let Some(t) = &c.target {
                comprehension_vars(t, out);
            }
            c.args.iter().for_each(|a| comprehension_vars(a, out));
        }
        E::List(l) => l.elements.iter().for_each(|x| comprehension_vars(x, out)),
        E::Select(s) => comprehension_vars(&s.operand, out),
        E::Map(m) => m.entries.iter().for_each(|en| match &en.expr {
            EntryExpr::StructField(f) => comprehension_vars(&f.value, out),
            EntryExpr::MapEntry(me) => {
                comprehension_vars(&me.key, out);
                comprehension_vars(&me.value, out);
            }
        }),
        E::Struct(s) => s.entries.iter().for_each(|en| match &en.expr {
            EntryExpr::StructField(f) => comprehension_vars(&f.value, out),
            EntryExpr::MapEntry(me) => {
                comprehension_vars(&me.key, out);
                comprehension_vars(&me.value, out);
            }
        }),
        _ => {}
    }
}

pub(super) fn declared_type(
    p: &mut Problems,
    path: &str,
    ty: Option<&str>,
    nullable: bool,
) -> Option<FieldType> {
    match ty {
        None => {
            p.add(
                path,
                "a computed field needs its type",
                format!(
                    "write it as {{expr: \"...\", type: long}}; types: {}",
                    Kind::DECLARABLE
                ),
            );
            None
        }
        Some(t) => match Kind::parse_declared(t) {
            Some(k) => Some(FieldType::new(k, nullable)),
            None => {
                p.add(
                    &format!("{path}.type"),
                    format!("unknown type `{t}`"),
                    format!("use one of: {}", Kind::DECLARABLE),
                );
                None
            }
        },
    }
}
