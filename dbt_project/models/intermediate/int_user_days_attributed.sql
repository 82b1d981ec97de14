-- Each user-day counts once for active_users, in the hour and country of the user's
-- first event that UTC day, and once for new_users, at the first signup. "First"
-- orders by occurred_at, then offset: a user's events share a partition (the key is
-- the user_id), so offsets order them.

with

events as (

    select * from {{ ref('stg_raw__events') }}

),

first_event as (

    select
        event_date,
        user_id,
        'active' as attribution,
        event_hour,
        country
    from events
    qualify row_number() over (
        partition by event_date, user_id order by occurred_at, kafka_offset
    ) = 1

),

first_signup as (

    select
        event_date,
        user_id,
        'signup' as attribution,
        event_hour,
        country
    from events
    where event_type = 'signup'
    qualify row_number() over (
        partition by event_date, user_id order by occurred_at, kafka_offset
    ) = 1

),

final as (

    select * from first_event
    union all
    select * from first_signup

)

select * from final
