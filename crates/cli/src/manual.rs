//! `nullworker completions SHELL` and `nullworker man`: shell completion
//! scripts (clap_complete) and roff man pages (clap_mangen), both generated
//! from the one clap definition in [`crate::cli::Cli`], so they never drift
//! from the real flags.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;

/// Options of `nullworker completions`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = "\
INSTALL:
  bash: nullworker completions bash > ~/.local/share/bash-completion/completions/nullworker
  zsh:  nullworker completions zsh > ~/.zfunc/_nullworker   (with fpath+=~/.zfunc before compinit)
  fish: nullworker completions fish > ~/.config/fish/completions/nullworker.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Options of `nullworker man`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = "\
INSTALL:
  nullworker man --out-dir ~/.local/share/man/man1    # then: man nullworker, man nullworker-serve
  nullworker man | man -l -                            # read it without installing")]
pub struct ManArgs {
    /// Write one page per command (`nullworker.1`, `nullworker-serve.1`, ...)
    /// into this directory instead of printing `nullworker.1`.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Writes the completion script for `args.shell` to `out`.
pub fn completions(args: &CompletionsArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "nullworker", out);
    out.flush().context("writing the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `nullworker.1` to `out`, or every page into `args.out_dir`.
pub fn man(args: &ManArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--out-dir {}: cannot create it", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("--out-dir {}: cannot write the pages", dir.display()))?;
            writeln!(out, "man pages written to {}", dir.display()).context("writing to stdout")?;
        }
        None => {
            clap_mangen::Man::new(cmd)
                .render(out)
                .context("writing the man page")?;
            out.flush().context("writing the man page")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible subcommand as its path below `nullworker`
    /// (`["engine", "key"]`), nested ones included.
    fn command_paths() -> Vec<Vec<String>> {
        fn walk(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let mut path = prefix.to_vec();
                path.push(sub.get_name().to_owned());
                out.push(path.clone());
                walk(sub, &path, out);
            }
        }
        let mut paths = Vec::new();
        walk(&Cli::command(), &[], &mut paths);
        paths
    }

    /// Every visible subcommand name, nested ones included.
    fn subcommands() -> Vec<String> {
        command_paths()
            .into_iter()
            .filter_map(|p| p.last().cloned())
            .collect()
    }

    fn completion(shell: clap_complete::Shell) -> String {
        let mut out = Vec::new();
        completions(&CompletionsArgs { shell }, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_bash_script_completes_every_subcommand_and_flag() {
        let script = completion(clap_complete::Shell::Bash);
        assert!(
            script.contains("complete -F"),
            "not a bash completion script"
        );
        let names = subcommands();
        for top in [
            "serve",
            "release",
            "engine",
            "endpoint",
            "client",
            "dispatch",
            "consume",
            "queue",
            "demo",
            "completions",
            "man",
            "key",
        ] {
            assert!(names.iter().any(|n| n == top), "{top} is not a subcommand");
        }
        for name in &names {
            assert!(
                script.contains(name.as_str()),
                "{name} missing from the bash script"
            );
        }
        for flag in [
            "--log-format",
            "--worker-port",
            "--stop-grace",
            "--state-dir",
        ] {
            assert!(script.contains(flag), "{flag} missing from the bash script");
        }
    }

    #[test]
    fn zsh_and_fish_scripts_are_generated() {
        let zsh = completion(clap_complete::Shell::Zsh);
        assert!(
            zsh.starts_with("#compdef nullworker"),
            "{}",
            &zsh[..40.min(zsh.len())]
        );
        let fish = completion(clap_complete::Shell::Fish);
        assert!(fish.contains("complete -c nullworker"), "not a fish script");
        for name in subcommands() {
            assert!(
                zsh.contains(&name) && fish.contains(&name),
                "{name} missing"
            );
        }
    }

    /// The page is roff a man reader accepts: a title first, the standard
    /// sections, requests only from the man macro set, balanced font
    /// changes, and every subcommand listed.
    #[test]
    fn the_man_page_is_well_formed_roff_listing_every_subcommand() {
        let mut out = Vec::new();
        man(&ManArgs { out_dir: None }, &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = page.lines().collect();
        let title = lines
            .iter()
            .find(|l| !l.starts_with(".ie") && !l.starts_with(".el") && !l.starts_with(".\\\""))
            .unwrap();
        assert!(
            title.starts_with(".TH nullworker 1"),
            "first request: {title}"
        );
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "SUBCOMMANDS",
            "VERSION",
        ] {
            assert!(
                lines.iter().any(|l| *l == format!(".SH {section}")),
                "no {section} section"
            );
        }
        const MACROS: [&str; 17] = [
            "TH", "SH", "SS", "TP", "IP", "PP", "P", "LP", "RS", "RE", "B", "I", "br", "sp", "ie",
            "el", "nf",
        ];
        for line in &lines {
            if let Some(request) = line.strip_prefix('.') {
                let name = request.split_whitespace().next().unwrap_or("");
                assert!(
                    name.is_empty()
                        || name.starts_with('\\')
                        || MACROS.contains(&name)
                        || name == "fi",
                    "unexpected request {line:?}"
                );
            }
        }
        let opens = page.matches("\\fB").count() + page.matches("\\fI").count();
        let closes = page.matches("\\fR").count() + page.matches("\\fP").count();
        assert_eq!(opens, closes, "unbalanced font changes");
        let top_level = command_paths().into_iter().filter(|p| p.len() == 1);
        for path in top_level {
            let name = &path[0];
            assert!(
                page.contains(&format!("nullworker\\-{name}(1)")),
                "{name} missing from the page"
            );
        }
        assert!(
            page.contains("EXIT CODES"),
            "the exit-code convention is missing"
        );
    }

    #[test]
    fn out_dir_gets_one_page_per_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        man(
            &ManArgs {
                out_dir: Some(dir.path().to_owned()),
            },
            &mut out,
        )
        .unwrap();
        let pages = command_paths()
            .into_iter()
            .map(|path| format!("nullworker-{}.1", path.join("-")))
            .chain(["nullworker.1".to_owned()]);
        for page in pages {
            let text = std::fs::read_to_string(dir.path().join(&page))
                .unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(
                text.starts_with(".ie") && text.contains("\n.TH "),
                "{page} has no title"
            );
        }
    }
}
