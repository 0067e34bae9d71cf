// The tables of schema/migrations, as diesel sees them.

diesel::table! {
    sagas (id) {
        id -> Uuid,
        name -> Text,
        idempotency_key -> Nullable<Text>,
        definition -> Jsonb,
        state -> Text,
        deadline -> Nullable<Timestamptz>,
        check_back_at -> Nullable<Timestamptz>,
        traceparent -> Nullable<Text>,
        tracestate -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        version -> Int8,
        check_back_purpose -> Nullable<Text>,
        check_attempts -> Int4,
        check_attempt_limit -> Int4,
        partition -> Int4,
        paused_at -> Nullable<Timestamptz>,
        paused_by -> Nullable<Text>,
        /// `participant:{name}` and `step:{name}` of every step, sorted (`store/search.rs`).
        step_terms -> Jsonb,
        /// Generated from `updated_at` once the saga is final (read only).
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    paused_saga_names (name) {
        name -> Text,
        paused_at -> Timestamptz,
    }
}

diesel::table! {
    saga_steps (saga_id, position) {
        saga_id -> Uuid,
        position -> Int4,
        name -> Text,
        state -> Text,
        attempts -> Int4,
        compensation_attempts -> Int4,
        compensation_attempt_limit -> Int4,
        output -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        timer_due_at -> Nullable<Timestamptz>,
        timer_purpose -> Nullable<Text>,
        refused -> Bool,
    }
}

diesel::table! {
    saga_events (saga_id, seq) {
        seq -> Int8,
        saga_id -> Uuid,
        at -> Timestamptz,
        kind -> Text,
        step -> Nullable<Text>,
        attempt -> Nullable<Int4>,
        detail -> Jsonb,
        epoch -> Nullable<Int8>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        saga_id -> Uuid,
        message_id -> Uuid,
        participant -> Text,
        kind -> Text,
        body -> Bytea,
        traceparent -> Nullable<Text>,
        tracestate -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(saga_steps -> sagas (saga_id));
diesel::joinable!(saga_events -> sagas (saga_id));
diesel::allow_tables_to_appear_in_same_query!(
    sagas,
    saga_steps,
    saga_events,
    outbox,
    paused_saga_names
);
