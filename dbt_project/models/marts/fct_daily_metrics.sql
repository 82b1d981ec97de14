with

hourly as (

    select * from {{ ref('fct_hourly_metrics') }}
    where {{ batch_days() }}

),

final as (

    select
        event_date,
        country,
        {% for metric in defined_metrics() %}
        cast(sum({{ metric.name }}) as bigint) as {{ metric.name }},
        {% endfor %}
        cast(count(distinct hour) as integer) as hours_built
    from hourly
    group by all

)

select * from final
