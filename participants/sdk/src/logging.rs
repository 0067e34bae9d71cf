//! Log lines about a command, with its saga's fields: the SDK's own lines and a participant's.
//!
//! A line about a command carries `saga_id`, `saga` (the saga's name), `step` (left out for a
//! check-back, which has none), `attempt` and, when the command came with a W3C `traceparent`,
//! `trace_id`, as key-values of the `log` facade. [`crate::init_logging`] writes them as fields
//! of a JSON line (`SAGA_LOG_FORMAT=json`) or as `key=value` after the message, as the
//! coordinator does, so one query finds a saga's lines on both sides.

/// Logs a line about a command with its saga's fields: `command_log!(level, command; "format",
/// args...)`, or with more key-values before the `;` (`command_log!(level, cmd, sku = "x"; ...)`).
/// `command` is a [`Command`](crate::Command) (any payload).
///
/// ```
/// use participants::{command_log, Command};
///
/// fn reserved(cmd: &Command, sku: &str) {
///     command_log!(log::Level::Info, cmd, sku = sku; "reserved {sku}");
/// }
/// ```
#[macro_export]
macro_rules! command_log {
    ($level:expr, $command:expr $(, $key:ident $(:$capture:tt)? = $value:expr)*; $($arg:tt)+) => {{
        let command = &$command;
        $crate::__private::log::log!(
            $level,
            saga_id:% = command.saga_id,
            saga = command.saga_name.as_str(),
            // A check-back has no step: no field rather than an empty one.
            step = (!command.step.is_empty()).then_some(command.step.as_str()),
            attempt = command.attempt,
            trace_id = $crate::__private::logfmt::trace_id(command.traceparent.as_deref())
            $(, $key $(:$capture)? = $value)*;
            $($arg)+
        )
    }};
}

/// What [`command_log!`] reads of a command, kept apart from the command so that a line written
/// after the command moved into its handler still carries the fields.
pub(crate) struct Attempt {
    pub saga_id: uuid::Uuid,
    pub saga_name: String,
    pub step: String,
    pub attempt: u32,
    pub traceparent: Option<String>,
}

impl Attempt {
    pub(crate) fn of<P>(command: &crate::Command<P>) -> Attempt {
        Attempt {
            saga_id: command.saga_id,
            saga_name: command.saga_name.clone(),
            step: command.step.clone(),
            attempt: command.attempt,
            traceparent: command.traceparent.clone(),
        }
    }
}
