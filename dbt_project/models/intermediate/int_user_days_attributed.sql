-- For each users metric (vars.metrics), each user-day counts once: in the hour and
-- country of the user's first event that UTC day among the metric's event types.
-- "First" orders by occurred_at, then offset: a user's events share a partition
-- (the key is the user_id), so offsets order them.

with

events as (

    select * from {{ ref('stg_raw__events') }}

),

user_metrics as (

    -- One row per users metric: its name, and the event types it looks at (null: every type).
    {{ user_metrics_relation() }}

),

candidates as (

    select
        events.event_date,
        events.user_id,
        user_metrics.name as attribution,
        events.event_hour,
        events.country,
        events.occurred_at,
        events.kafka_offset
    from events
    inner join user_metrics
        on user_metrics.event_types is null
        or list_contains(user_metrics.event_types, events.event_type)

),

final as (

    select
        event_date,
        user_id,
        attribution,
        event_hour,
        country
    from candidates
    qualify row_number() over (
        partition by attribution, event_date, user_id order by occurred_at, kafka_offset
    ) = 1

)

select * from final
