//! Every `webcnn ...` command the README and docs/ show parses with this CLI's own parser,
//! so a renamed or removed flag fails the tests instead of a reader.

use super::Cli;
use clap::{CommandFactory, Parser};
use std::path::{Path, PathBuf};

fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        root.join("README.md"),
        root.join("RELIABILITY.md"),
        root.join("www/npm/README.md"),
    ];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// A command line's words, with the shell's quotes taken off (no expansions).
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quote, mut any) = (vec![], String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => (quote, any) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The words after `webcnn` (or `cargo run --release --`), if the line is such a command.
fn command(text: &str) -> Option<Vec<String>> {
    let text = text.trim();
    let rest = text
        .strip_prefix("webcnn ")
        .or_else(|| text.strip_prefix("cargo run --release -- "))?;
    // A shell comment ends the command.
    let rest = rest.split(" #").next().unwrap();
    Some(words(rest))
}

/// The subcommand exists and every `--flag` shown is one of its arguments. Synopses such
/// as `classify IMG... [--top K]` are checked this way; their placeholders do not parse.
fn check_flags(cmd: &[String]) -> Result<(), String> {
    // `webcnn ...` in prose names the CLI, not a command.
    let Some(name) = cmd.first().filter(|w| !w.starts_with(['-', '.'])) else {
        return Ok(());
    };
    let app = Cli::command();
    let sub = app
        .find_subcommand(name)
        .ok_or_else(|| format!("no subcommand '{name}'"))?;
    for w in &cmd[1..] {
        let w = w
            .trim_start_matches('[')
            .trim_end_matches([']', ',', '.', ';', ')']);
        let Some(flag) = w.strip_prefix("--") else {
            continue;
        };
        let flag = flag.split('=').next().unwrap();
        let known = flag == "help"
            || sub.get_arguments().any(|a| {
                a.get_long() == Some(flag) || a.get_aliases().is_some_and(|l| l.contains(&flag))
            });
        if !known {
            return Err(format!("'{name}' has no flag --{flag}"));
        }
    }
    Ok(())
}

/// A command's line in its file and its words.
type Found = Vec<(usize, Vec<String>)>;

/// Every command in a fenced block (parsed whole) and every inline code span that starts
/// with `webcnn ` (flags checked).
fn commands(file: &Path) -> (Found, Found) {
    let text = std::fs::read_to_string(file).unwrap();
    let (mut whole, mut inline) = (vec![], vec![]);
    let mut fenced = false;
    let mut prose = String::new();
    let mut prose_lines = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            if let Some(c) = command(line) {
                whole.push((i + 1, c));
            }
        } else {
            prose.push_str(line);
            prose.push(' ');
            prose_lines.push((prose.len(), i + 1));
        }
    }
    // Inline spans may wrap across lines.
    let mut rest = prose.as_str();
    let mut at = 0;
    while let Some(open) = rest.find('`') {
        let Some(len) = rest[open + 1..].find('`') else {
            break;
        };
        let span = &rest[open + 1..open + 1 + len];
        let line = prose_lines
            .iter()
            .find(|(end, _)| *end > at + open)
            .map_or(0, |l| l.1);
        if let Some(c) = command(span) {
            inline.push((line, c));
        }
        at += open + len + 2;
        rest = &rest[open + len + 2..];
    }
    (whole, inline)
}

#[test]
fn every_documented_command_parses() {
    let mut errors = vec![];
    let mut counted = 0;
    for file in documents() {
        let name = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .display()
            .to_string();
        let (whole, inline) = commands(&file);
        for (line, cmd) in whole {
            counted += 1;
            let args = std::iter::once("webcnn".to_string()).chain(cmd.iter().cloned());
            if let Err(e) = Cli::try_parse_from(args) {
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                errors.push(format!("{name}:{line}: webcnn {}: {first}", cmd.join(" ")));
            }
        }
        for (line, cmd) in inline {
            counted += 1;
            if let Err(e) = check_flags(&cmd) {
                errors.push(format!("{name}:{line}: webcnn {}: {e}", cmd.join(" ")));
            }
        }
    }
    eprintln!("{counted} documented commands checked");
    assert!(counted > 20, "only {counted} commands found in the docs");
    assert!(
        errors.is_empty(),
        "documented commands that do not parse:\n{}",
        errors.join("\n")
    );
}

#[test]
fn a_wrong_flag_is_caught() {
    let bad = command("webcnn classify cat.jpg --topk 5").unwrap();
    assert!(Cli::try_parse_from(std::iter::once("webcnn".to_string()).chain(bad.clone())).is_err());
    assert!(check_flags(&bad).is_err());
    assert!(check_flags(&command("webcnn classify IMG... [--top K] [--json]").unwrap()).is_ok());
    assert!(check_flags(&command("webcnn clasify IMG").unwrap()).is_err());
    assert_eq!(words(r#"a 'b c' "d""#), ["a", "b c", "d"]);
}

#[test]
fn the_readme_shows_the_rust_example_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/classify.rs")).unwrap();
    assert!(
        readme.contains(example.trim()),
        "README.md does not show examples/classify.rs as it is"
    );
}
