"""The hand-written DuckDB statement the dbt models are measured against.

It computes what `fct_hourly_metrics` holds for one day (one row per UTC hour
and country) from the same raw Parquet files, written the way one would by
hand for DuckDB: the first copy of each event by a window, and each user's
first event and first signup of the day by ``arg_min`` in one grouping,
instead of one window per attribution. The metrics are spelled out rather
than generated from the definition: it is the fixed yardstick, and the
benchmark checks that both give the same table.
"""

HOURLY_SQL = """
create or replace table hourly_metrics as
with

events as (
    select
        event_id,
        event_type,
        user_id,
        occurred_at,
        country,
        amount_cents,
        kafka_offset,
        cast(date_trunc('hour', occurred_at) as timestamp) as event_hour
    from read_parquet($files, hive_partitioning = true, union_by_name = true)
    where event_date = cast($day as date)
    qualify row_number() over (partition by event_id order by kafka_partition, kafka_offset) = 1
),

firsts as (
    select
        arg_min({'event_hour': event_hour, 'country': country}, (occurred_at, kafka_offset)) as first_event,
        arg_min({'event_hour': event_hour, 'country': country}, (occurred_at, kafka_offset))
            filter (where event_type = 'signup') as first_signup
    from events
    group by user_id
),

attributions as (
    select first_event.event_hour, first_event.country, 1 as active_user, 0 as new_user from firsts
    union all
    select first_signup.event_hour, first_signup.country, 0, 1 from firsts where first_signup is not null
),

user_counts as (
    select event_hour, country, sum(active_user) as active_users, sum(new_user) as new_users
    from attributions
    group by all
),

event_counts as (
    select
        event_hour,
        country,
        count(*) as events,
        count(*) filter (where event_type = 'order') as orders,
        coalesce(sum(amount_cents) filter (where event_type = 'order'), 0) as revenue_cents,
        count(*) filter (where event_type = 'page_view') as page_views
    from events
    group by all
)

select
    cast(e.event_hour as date) as event_date,
    cast(hour(e.event_hour) as integer) as hour,
    e.event_hour,
    e.country,
    cast(e.events as bigint) as events,
    cast(coalesce(u.new_users, 0) as bigint) as new_users,
    cast(coalesce(u.active_users, 0) as bigint) as active_users,
    cast(e.orders as bigint) as orders,
    cast(e.revenue_cents as bigint) as revenue_cents,
    cast(e.page_views as bigint) as page_views
from event_counts as e
left join user_counts as u using (event_hour, country)
"""
