//! The subset of CEL (Common Expression Language) that KFP pipelines carry: trigger conditions
//! (`int(inputs.parameter_values['pipelinechannel--n']) > 5`) and parameter selectors
//! (`parseJson(string_value)["a"]`).
//!
//! Conditions are evaluated while a committed entry is applied, on every replica, from input
//! that users control, so parsing and evaluation must be total (no panic, no stack overflow)
//! and bounded. The CEL crates cannot promise that today: `cel` / `cel-interpreter` parse with
//! an ANTLR-generated parser that panics on some invalid input (cel-rust#305), overflows the
//! stack on nesting its own depth limit allows (#212) and spends memory exponential in the
//! length of some 125-byte inputs (#306), and they have no evaluation budget. So Gantry reads
//! the subset itself, with every limit explicit:
//!
//! - the source is at most [`MAX_SOURCE_BYTES`], brackets, calls and `?:` nest at most
//!   [`MAX_NESTING`] deep and a program has at most [`MAX_NODES`] nodes; operator chains
//!   (`a && b && ...`, `x.a.b[0]`) are stored flat, so neither the parser nor the evaluator
//!   recurses deeper than the nesting;
//! - evaluation spends a budget: one unit per node and one per byte it copies, compares or
//!   parses; a program that would spend more fails with [`EvalError::BudgetExhausted`]. No loop
//!   construct (macros, comprehensions) is read, so the cost is linear in the program and its
//!   data.
//!
//! What is read: `null`, `true`, `false`, int (`7`, `0x1f`), uint (`7u`), double (`2.5`,
//! `1e3`), string literals (quoted `'` or `"`, tripled, raw with `r`, CEL's escapes), lists,
//! maps with string keys, `!` and unary `-`, `* / % + -`, `== != < <= > >= in`, `&& ||` (with
//! CEL's rule that `false && error` is `false`), `?:`, field selection, indexing, and the
//! functions `int`, `uint`, `double`, `string`, `bool`, `size`, `contains`, `startsWith`,
//! `endsWith` and `parseJson`. Numbers compare by value across int, uint and double (as cel-go
//! with its default heterogeneous equality); arithmetic does not mix them. Integer overflow
//! and division by zero are errors.

mod eval;
mod lex;
mod parse;
mod value;

#[cfg(test)]
mod tests;

pub use eval::EvalError;
pub use parse::{Program, SyntaxError};
pub use value::Value;

/// Longest source accepted, in bytes. The SDK's longest (a `dsl.Elif` chain negating every
/// earlier branch) stay far below.
pub const MAX_SOURCE_BYTES: usize = 16 * 1024;
/// Deepest nesting of parentheses, lists, maps, call arguments, indexes and `?:` branches.
/// The SDK writes at most 5 (`!(double(int(inputs.parameter_values['x'])) == 3.0)`).
pub const MAX_NESTING: usize = 32;
/// Most nodes (literals, names, operators, fields, calls) in one program.
pub const MAX_NODES: usize = 4096;
/// The evaluation budget a run gets unless it was submitted with another
/// (`--cel-evaluation-budget`): enough to compare or parse values of several MiB.
pub const DEFAULT_BUDGET: u64 = 16 << 20;
