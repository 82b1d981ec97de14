-- The one serving definition. It reads published files only (the batch layer's
-- exported hours and the speed layer's per-partition snapshots), so
-- `lambdaflow query` renders and runs this same SQL in process without opening
-- the warehouse. Batch rows serve the hours before the boundary of the days the
-- batch has built (up to each day's built_until), realtime rows every other hour:
-- the hours from the boundary on, and the days not built (invariant 5). No hour is
-- served by both layers, none by neither.
-- The files are the two published sources (for the lineage; the lists come from vars):
-- depends_on: {{ source('published', 'batch_hours') }}, {{ source('published', 'speed_snapshots') }}

{% set metrics = var('metrics') %}
{% set served_columns -%}
    event_date, hour, country{% for metric in metrics %}, {{ metric.name }}{% endfor %}
{%- endset %}

{% set no_rows %}
    select
        null::date as event_date, null::integer as hour, null::varchar as country,
        {% for metric in metrics %}null::bigint as {{ metric.name }}{{ "," if not loop.last }}{% endfor %}
    where false
{% endset %}

with

batch as (

    {% if var('batch_files') != '[]' and var('boundary') %}
    -- By name onto every served column: a metric added after a day was built reads as null in that
    -- day's file, whichever published files are read (a query reads only its days' files).
    select {{ served_columns }}
    from (
        ({{ no_rows }})
        union all by name
        select * from read_parquet({{ var('batch_files') }}, union_by_name = true)
    )
    where event_hour < cast('{{ var("boundary") }}' as timestamp)
    {% else %}
    {{ no_rows }}
    {% endif %}

),

-- Per built day, the end of the hours the batch serves: the earlier of the boundary
-- and the day's built_until. A day not listed is served by the speed layer alone.
batch_served_days as (

    select
        unnest({{ var('batch_days') }}::date[]) as event_date,
        unnest({{ var('batch_until') }}::timestamp[]) as served_until

),

realtime_partitions as (

    {% if var('speed_snapshots') != '[]' %}
    select {{ served_columns }}
    from read_parquet({{ var('speed_snapshots') }}, union_by_name = true)
    left join batch_served_days using (event_date)
    where cast(event_date as timestamp) + to_hours(hour) >= coalesce(served_until, cast(event_date as timestamp))
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
        {% for metric in metrics %}
        sum({{ metric.name }}) as {{ metric.name }}{{ "," if not loop.last }}
        {% endfor %}
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
    {% for metric in metrics %}
    cast({{ metric.name }} as bigint) as {{ metric.name }},
    {% endfor %}
    source
from final
