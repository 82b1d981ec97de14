with

events as (

    select * from {{ ref('stg_raw__events') }}

),

attributed as (

    select * from {{ ref('int_user_days_attributed') }}

),

event_counts as (

    select
        event_date,
        event_hour,
        country,
        count(*) as events,
        count(*) filter (where event_type = 'order') as orders,
        coalesce(sum(amount_cents) filter (where event_type = 'order'), 0) as revenue_cents
    from events
    group by all

),

user_counts as (

    select
        event_date,
        event_hour,
        country,
        count(*) filter (where attribution = 'signup') as new_users,
        count(*) filter (where attribution = 'active') as active_users
    from attributed
    group by all

),

final as (

    select
        event_counts.event_date,
        cast(hour(event_counts.event_hour) as integer) as hour,
        event_counts.event_hour,
        event_counts.country,
        cast(event_counts.events as bigint) as events,
        cast(coalesce(user_counts.new_users, 0) as bigint) as new_users,
        cast(coalesce(user_counts.active_users, 0) as bigint) as active_users,
        cast(event_counts.orders as bigint) as orders,
        cast(event_counts.revenue_cents as bigint) as revenue_cents
    from event_counts
    -- Every attribution points at an event, so its hour and country have event counts.
    left join user_counts
        on event_counts.event_hour = user_counts.event_hour
        and event_counts.country = user_counts.country

)

select * from final
{% if is_incremental() %}
    where event_date = cast('{{ var("ds") }}' as date)
{% endif %}
