with

hourly as (

    select * from {{ ref('fct_hourly_metrics') }}
    where event_date = cast('{{ var("ds") }}' as date)

),

final as (

    select
        event_date,
        country,
        cast(sum(events) as bigint) as events,
        cast(sum(new_users) as bigint) as new_users,
        cast(sum(active_users) as bigint) as active_users,
        cast(sum(orders) as bigint) as orders,
        cast(sum(revenue_cents) as bigint) as revenue_cents,
        cast(count(distinct hour) as integer) as hours_built
    from hourly
    group by all

)

select * from final
