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
        {% for metric in counted_metrics() %}
        {{ metric_aggregate(metric) }} as {{ metric.name }},
        {% endfor %}
    from events
    group by all

),

user_counts as (

    select
        event_date,
        event_hour,
        country,
        {% for metric in user_metrics() %}
        count(*) filter (where attribution = '{{ metric.name }}') as {{ metric.name }},
        {% endfor %}
    from attributed
    group by all

),

joined as (

    select
        event_counts.event_date,
        cast(hour(event_counts.event_hour) as integer) as hour,
        event_counts.event_hour,
        event_counts.country,
        {% for metric in counted_metrics() %}
        cast(event_counts.{{ metric.name }} as bigint) as {{ metric.name }},
        {% endfor %}
        {% for metric in user_metrics() %}
        cast(coalesce(user_counts.{{ metric.name }}, 0) as bigint) as {{ metric.name }},
        {% endfor %}
    from event_counts
    -- Every attribution points at an event, so its hour and country have event counts.
    left join user_counts
        on event_counts.event_hour = user_counts.event_hour
        and event_counts.country = user_counts.country

),

final as (

    -- The metric columns in the order of their definition.
    select
        event_date,
        hour,
        event_hour,
        country,
        {% for metric in defined_metrics() %}
        {{ metric.name }},
        {% endfor %}
    from joined

)

select * from final
{% if is_incremental() %}
    where {{ batch_days() }}
{% endif %}
