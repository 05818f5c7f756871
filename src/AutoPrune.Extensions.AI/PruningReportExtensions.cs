using System.Text.Json;
using System.Text.Json.Serialization;
using AutoPrune.Pruning;
using Microsoft.Extensions.AI;

namespace AutoPrune.Extensions.AI;

/// <summary>
/// Typed access to the <see cref="PruningReport"/> an AutoPrune chat client attaches to its answers, wherever it ended
/// up: on the response, on its message (also after <c>ToChatResponseAsync()</c> over streaming updates), on the last
/// streaming update, or deserialized from JSON by a cache (<c>UseDistributedCache</c>).
/// </summary>
public static class PruningReportExtensions
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        Converters = { new JsonStringEnumConverter() },
        NumberHandling = JsonNumberHandling.AllowReadingFromString | JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>The report of the answer in <paramref name="response"/>, or null when it has none (another client's response).</summary>
    /// <exception cref="InvalidOperationException">The report is there but cannot be read as a <see cref="PruningReport"/>.</exception>
    public static PruningReport? GetPruningReport(this ChatResponse response)
    {
        ArgumentNullException.ThrowIfNull(response);
        if (Read(response.AdditionalProperties) is { } report) return report;
        for (int i = response.Messages.Count - 1; i >= 0; i--)
            if (Read(response.Messages[i].AdditionalProperties) is { } fromMessage) return fromMessage;
        return null;
    }

    /// <summary>The report on <paramref name="message"/>, or null.</summary>
    /// <exception cref="InvalidOperationException">The report is there but cannot be read as a <see cref="PruningReport"/>.</exception>
    public static PruningReport? GetPruningReport(this ChatMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        return Read(message.AdditionalProperties);
    }

    /// <summary>The report on a streaming update (the last update of an answer carries it), or null.</summary>
    /// <exception cref="InvalidOperationException">The report is there but cannot be read as a <see cref="PruningReport"/>.</exception>
    public static PruningReport? GetPruningReport(this ChatResponseUpdate update)
    {
        ArgumentNullException.ThrowIfNull(update);
        return Read(update.AdditionalProperties);
    }

    private static PruningReport? Read(AdditionalPropertiesDictionary? properties)
    {
        if (properties is null || !properties.TryGetValue(PruningKnobs.ReportKey, out var value) || value is null) return null;
        try
        {
            return value switch
            {
                PruningReport report => report,
                JsonElement element => element.Deserialize<PruningReport>(Json),
                string json => JsonSerializer.Deserialize<PruningReport>(json, Json),
                _ => throw new InvalidOperationException($"'{PruningKnobs.ReportKey}' holds a {value.GetType().FullName}, not a PruningReport."),
            };
        }
        catch (JsonException e)
        {
            throw new InvalidOperationException($"'{PruningKnobs.ReportKey}' holds JSON that is not a PruningReport: {e.Message}", e);
        }
    }
}
