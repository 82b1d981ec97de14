-- For each users metric (vars.metrics), each user-day counts once: in the hour and
-- country of the user's first event that UTC day among the metric's event types.
-- "First" orders by occurred_at, then offset: a user's events share a partition
-- (the key is the user_id), so offsets order them.

with

events as (

    select * from {{ ref('stg_raw__events') }}

),

{% for metric in user_metrics() %}
first_for_{{ metric.name }} as (

    select
        event_date,
        user_id,
        '{{ metric.name }}' as attribution,
        event_hour,
        country
    from events
    where {{ metric_selects(metric) }}
    qualify row_number() over (
        partition by event_date, user_id order by occurred_at, kafka_offset
    ) = 1

),

{% endfor %}
final as (

    {% for metric in user_metrics() %}
    select * from first_for_{{ metric.name }}
    {{ "union all" if not loop.last }}
    {% else %}
    select event_date, user_id, null::varchar as attribution, event_hour, country
    from events
    where false
    {% endfor %}

)

select * from final
