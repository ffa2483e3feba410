//! The README's quickstart is `examples/quickstart.rs`, word for word (the README block also runs
//! as a doctest): the two cannot drift apart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn the_readme_quickstart_is_the_quickstart_example() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/quickstart.rs");
    let code =
        &example[example.find("use ferroflow::prelude::*;").expect("the example imports the prelude")..];
    let block = format!("```rust\n{code}```");
    assert!(readme.contains(&block), "README's quickstart block differs from examples/quickstart.rs");
    let main: Vec<&str> = code.lines().skip_while(|l| !l.starts_with("async fn main")).collect();
    assert!(main.len() <= 22, "main has {} lines (20 in its body at most)", main.len());
    assert_eq!(code.lines().filter(|l| l.starts_with("use ")).count(), 1, "one use line");
}
