-- The one serving definition. It reads published files only (the batch layer's
-- exported hours and the speed layer's per-partition snapshots), so
-- `lambdaflow query` renders and runs this same SQL in process without opening
-- the warehouse. Batch rows serve the hours before the boundary, realtime rows
-- the hours from it on (invariant 5): no hour is served from both.

{% set no_rows %}
    select
        null::date as event_date, null::integer as hour, null::varchar as country,
        null::bigint as events, null::bigint as new_users, null::bigint as active_users,
        null::bigint as orders, null::bigint as revenue_cents
    where false
{% endset %}

with

batch as (

    {% if var('batch_files') != '[]' and var('boundary') %}
    select
        event_date,
        hour,
        country,
        events,
        new_users,
        active_users,
        orders,
        revenue_cents
    from read_parquet({{ var('batch_files') }}, union_by_name = true)
    where event_hour < cast('{{ var("boundary") }}' as timestamp)
    {% else %}
    {{ no_rows }}
    {% endif %}

),

realtime_partitions as (

    {% if var('speed_snapshots') != '[]' %}
    select * from read_parquet({{ var('speed_snapshots') }}, union_by_name = true)
    {% if var('boundary') %}
    where cast(event_date as timestamp) + to_hours(hour) >= cast('{{ var("boundary") }}' as timestamp)
    {% endif %}
    {% else %}
    {{ no_rows }}
    {% endif %}

),

-- Each partition owns its users and events, so partitions add up.
realtime as (

    select
        event_date,
        hour,
        country,
        sum(events) as events,
        sum(new_users) as new_users,
        sum(active_users) as active_users,
        sum(orders) as orders,
        sum(revenue_cents) as revenue_cents
    from realtime_partitions
    group by event_date, hour, country

),

final as (

    select *, 'batch' as source from batch
    union all
    select *, 'realtime' as source from realtime

)

select
    cast(event_date as date) as event_date,
    cast(hour as integer) as hour,
    cast(country as varchar) as country,
    cast(events as bigint) as events,
    cast(new_users as bigint) as new_users,
    cast(active_users as bigint) as active_users,
    cast(orders as bigint) as orders,
    cast(revenue_cents as bigint) as revenue_cents,
    source
from final
