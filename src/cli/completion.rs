//! How the binary was invoked (as `kvtenant`, as the kubectl plugin `kubectl-kvtenant`, which
//! kubectl runs for `kubectl kvtenant ...`, or as `kubectl_complete-kvtenant`, which kubectl runs
//! to complete `kubectl kvtenant <TAB>`), and `kvtenant completion SHELL`.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::{Args, CommandFactory, Parser};
use clap_complete::Shell;

/// The executable name kubectl looks for on PATH to run `kubectl kvtenant`.
pub const PLUGIN_EXECUTABLE: &str = "kubectl-kvtenant";

/// The executable kubectl (1.26+) runs to complete `kubectl kvtenant ...`: with the words after
/// `kvtenant` (the last one being completed), it prints cobra's completion format.
pub const PLUGIN_COMPLETION_EXECUTABLE: &str = "kubectl_complete-kvtenant";

/// Whether `argv0` is the kubectl plugin's executable (a copy or symlink of this binary
/// named `kubectl-kvtenant`; kubectl runs it by its path).
pub fn is_plugin(argv0: Option<&OsStr>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == PLUGIN_EXECUTABLE)
}

/// Whether `argv0` is the kubectl plugin's completion executable.
pub fn is_plugin_completion(argv0: Option<&OsStr>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == PLUGIN_COMPLETION_EXECUTABLE)
}

/// Completions of the last of `words` (the words after `kvtenant`, the last one possibly
/// empty) in the format kubectl takes from a plugin's completion executable (cobra's): one
/// `value<TAB>help` per line, then `:4` (no file names) when there are any, else `:0` (the
/// shell's own completion, e.g. file names for `-f`).
pub fn kubectl_completions<C: CommandFactory>(words: &[OsString]) -> String {
    let mut cmd = C::command();
    let mut args = vec![OsString::from("kvtenant")];
    args.extend(words.iter().cloned());
    if words.is_empty() {
        args.push(OsString::new());
    }
    let index = args.len() - 1;
    let candidates =
        clap_complete::engine::complete(&mut cmd, args, index, None).unwrap_or_default();
    let mut out = String::new();
    for c in candidates.iter().filter(|c| !c.is_hide_set()) {
        out.push_str(&c.get_value().to_string_lossy());
        if let Some(help) = c.get_help() {
            let help = help.to_string();
            let first = help.lines().next().unwrap_or_default();
            if !first.is_empty() {
                out.push('\t');
                out.push_str(first);
            }
        }
        out.push('\n');
    }
    out.push_str(if candidates.is_empty() {
        ":0\n"
    } else {
        ":4\n"
    });
    out
}

/// The command name usage and help show.
pub fn display_name(argv0: Option<&OsStr>) -> &'static str {
    if is_plugin(argv0) {
        "kubectl kvtenant"
    } else {
        "kvtenant"
    }
}

/// The name a completion script registers: the executable a shell runs (`kubectl kvtenant`
/// is not one: kubectl's own completion asks `kubectl_complete-kvtenant`).
pub fn completion_name(argv0: Option<&OsStr>) -> &'static str {
    if is_plugin(argv0) {
        PLUGIN_EXECUTABLE
    } else {
        "kvtenant"
    }
}

/// The command as typed, for the hints commands print (`kvtenant` or `kubectl kvtenant`).
pub fn command_name() -> &'static str {
    display_name(std::env::args_os().next().as_deref())
}

/// Parses the command line, usage and errors naming the command as it was invoked. Exits 2
/// on a usage error, 0 after `--help`/`--version` (clap's codes).
pub fn parse<C: Parser>() -> C {
    let argv0 = std::env::args_os().next();
    if is_plugin_completion(argv0.as_deref()) {
        let words: Vec<OsString> = std::env::args_os().skip(1).collect();
        print!("{}", kubectl_completions::<C>(&words));
        std::process::exit(0);
    }
    let matches = C::command()
        .bin_name(display_name(argv0.as_deref()))
        .get_matches();
    C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The completion script of `C` for `shell`, registered for `name`.
pub fn script<C: CommandFactory>(shell: Shell, name: &str) -> String {
    let mut cmd = C::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `kvtenant completion SHELL`: prints the script.
pub fn completion<C: CommandFactory>(args: CompletionArgs) -> anyhow::Result<()> {
    let argv0 = std::env::args_os().next();
    print!(
        "{}",
        script::<C>(args.shell, completion_name(argv0.as_deref()))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_executable_is_told_by_its_file_name() {
        let plugin = Some(OsStr::new("/usr/local/bin/kubectl-kvtenant"));
        assert!(is_plugin(plugin));
        assert_eq!(display_name(plugin), "kubectl kvtenant");
        assert_eq!(completion_name(plugin), "kubectl-kvtenant");
        for other in [
            "kvtenant",
            "/x/kvtenant",
            "/x/kubectl-kvtenant-old",
            "kubectl",
        ] {
            let a = Some(OsStr::new(other));
            assert!(!is_plugin(a), "{other}");
            assert_eq!(display_name(a), "kvtenant");
        }
        assert_eq!(display_name(None), "kvtenant");
    }

    #[derive(Parser)]
    #[command(name = "demo")]
    #[allow(dead_code)]
    struct Demo {
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        /// Lists things.
        List,
    }

    #[test]
    fn kubectl_completions_are_cobras_format() {
        let words = |w: &[&str]| w.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            kubectl_completions::<Demo>(&words(&["li"])),
            "list\tLists things\n:4\n"
        );
        let all = kubectl_completions::<Demo>(&words(&[]));
        assert!(all.starts_with("list\tLists things\n"), "{all}");
        assert_eq!(kubectl_completions::<Demo>(&words(&["zz"])), ":0\n");
        assert!(is_plugin_completion(Some(OsStr::new(
            "/p/kubectl_complete-kvtenant"
        ))));
        assert!(!is_plugin_completion(Some(OsStr::new(
            "/p/kubectl-kvtenant"
        ))));
    }

    #[test]
    fn scripts_register_the_given_name_and_complete_subcommands() {
        let bash = script::<Demo>(Shell::Bash, "kvtenant");
        assert!(bash.contains("complete -F _kvtenant"), "{bash}");
        assert!(bash.contains("list"));
        let fish = script::<Demo>(Shell::Fish, "kubectl-kvtenant");
        assert!(fish.contains("complete -c kubectl-kvtenant"), "{fish}");
    }
}
