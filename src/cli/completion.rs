//! How the binary was invoked (as `kvtenant`, or as the kubectl plugin `kubectl-kvtenant`, which
//! kubectl runs for `kubectl kvtenant ...`), and `kvtenant completion SHELL`.

use std::ffi::OsStr;
use std::path::Path;

use clap::{Args, CommandFactory, Parser};
use clap_complete::Shell;

/// The executable name kubectl looks for on PATH to run `kubectl kvtenant`.
pub const PLUGIN_EXECUTABLE: &str = "kubectl-kvtenant";

/// Whether `argv0` is the kubectl plugin's executable (a copy or symlink of this binary
/// named `kubectl-kvtenant`; kubectl runs it by its path).
pub fn is_plugin(argv0: Option<&OsStr>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == PLUGIN_EXECUTABLE)
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
/// is not one; kubectl's own completion does not reach into plugins written without cobra).
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
    fn scripts_register_the_given_name_and_complete_subcommands() {
        let bash = script::<Demo>(Shell::Bash, "kvtenant");
        assert!(bash.contains("complete -F _kvtenant"), "{bash}");
        assert!(bash.contains("list"));
        let fish = script::<Demo>(Shell::Fish, "kubectl-kvtenant");
        assert!(fish.contains("complete -c kubectl-kvtenant"), "{fish}");
    }
}
