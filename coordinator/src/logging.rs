//! The fields of a log line about a saga (README, "Logs"; docs/contract-notes.md).
//!
//! Every line about a particular saga carries `saga_id` and `saga` (its name), and `trace_id` when
//! it was submitted with a W3C `traceparent`, as key-values of the `log` facade; a line about a
//! step attempt adds `step` and `attempt`. `logfmt` (set up in `cli.rs`) writes them as fields of
//! a JSON line or as `key=value` after the message, so a log pipeline finds a saga's lines without
//! parsing messages. [`saga_log!`] writes the saga's fields in one place, so no call site can
//! spell them differently.

/// `saga_log!(level, saga; "format", args...)`, or with more key-values before the `;`:
/// `saga_log!(level, saga, step = name, attempt = n; "...")`. `saga` is anything with a saga's
/// `id`, `definition.name` and `traceparent` (a [`crate::saga::Saga`]).
macro_rules! saga_log {
    ($level:expr, $saga:expr $(, $key:ident $(:$capture:tt)? = $value:expr)*; $($arg:tt)+) => {{
        let saga = &$saga;
        log::log!(
            $level,
            saga_id:% = saga.id,
            saga = saga.definition.name.as_str(),
            trace_id = logfmt::trace_id(saga.traceparent.as_deref())
            $(, $key $(:$capture)? = $value)*;
            $($arg)+
        )
    }};
}

pub(crate) use saga_log;
