using System.Text;
using AutoPrune.Pruning;
using Microsoft.Extensions.AI;

namespace AutoPrune.Extensions.AI;

/// <summary>Translates Microsoft.Extensions.AI messages and options into a <see cref="VisionRequest"/> (and nothing else).</summary>
internal static class ChatRequestTranslator
{
    public static VisionRequest ToVisionRequest(IEnumerable<ChatMessage> messages, ChatOptions? options, AutoPruneChatClientOptions defaults)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var system = new List<string>();
        var turns = new List<ConversationTurn>();
        var images = new List<ImageInput>();
        int index = 0;
        foreach (var message in messages)
        {
            if (message is null) throw new ArgumentException($"Message {index} is null.", nameof(messages));
            var role = message.Role;
            if (role == ChatRole.System)
                system.Add(RenderText(message, index));
            else if (role == ChatRole.User)
                turns.Add(new ConversationTurn(TurnRole.User, RenderUser(message, index, images)));
            else if (role == ChatRole.Assistant)
                turns.Add(new ConversationTurn(TurnRole.Assistant, RenderText(message, index)));
            else
                throw new NotSupportedException($"Message {index} has role '{role}'; the AutoPrune chat client supports system, user and assistant messages only.");
            index++;
        }
        if (options?.Instructions is { Length: > 0 } instructions) system.Add(instructions);
        if (system.Count > 0)
            turns.Insert(0, new ConversationTurn(TurnRole.System, string.Join("\n", system)));
        if (turns.Count == 0 || turns[^1].Role != TurnRole.User)
            throw new ArgumentException("The chat must end with a user message (the question).", nameof(messages));

        var (pruning, defaultPruning) = ToPruning(options, defaults);
        return new VisionRequest
        {
            Turns = turns,
            Images = images,
            Generation = ToGeneration(options, defaults),
            Pruning = pruning,
            DefaultPruning = defaultPruning,
        };
    }

    internal static GenerationOptions ToGeneration(ChatOptions? o, AutoPruneChatClientOptions defaults)
    {
        var g = new GenerationOptions { MaxNewTokens = defaults.MaxOutputTokens };
        if (o is null) return g;
        if (o.MaxOutputTokens is int max) g = g with { MaxNewTokens = max };
        if (o.Temperature is float t) g = g with { Temperature = t };
        if (o.TopP is float p) g = g with { TopP = p };
        if (o.Seed is long seed)
        {
            if (seed is < int.MinValue or > int.MaxValue)
                throw new ArgumentOutOfRangeException(nameof(ChatOptions.Seed), seed, "Seed must fit in a 32-bit integer.");
            g = g with { Seed = (int)seed };
        }
        if (o.StopSequences is { Count: > 0 } stops) g = g with { StopSequences = stops.ToArray() };
        if (ToResponseFormat(o.ResponseFormat) is { } format) g = g with { ResponseFormat = format };
        return g;
    }

    /// <summary>
    /// <see cref="ChatResponseFormat.Json"/> is any JSON object, <see cref="ChatResponseFormat.ForJsonSchema(System.Text.Json.JsonElement, string?, string?)"/>
    /// a document valid against the schema (decoding constrained; a schema outside the supported subset is an
    /// <see cref="ArgumentException"/> naming the keyword); null and <see cref="ChatResponseFormat.Text"/> are free text.
    /// </summary>
    internal static ResponseFormat? ToResponseFormat(ChatResponseFormat? format) => format switch
    {
        ChatResponseFormatJson { Schema: { } schema } json => ResponseFormat.ForJsonSchema(schema.GetRawText(), json.SchemaName),
        ChatResponseFormatJson => ResponseFormat.JsonObject,
        _ => null,
    };

    /// <summary>
    /// The request's pruning: a method named in the chat options is explicit (it must serve the request); without one,
    /// the client's configured method and budget are a default (a request it cannot serve runs unpruned, and the report
    /// says why). Neither leaves both null, so the model's own default applies.
    /// </summary>
    internal static (PruningOptions? Explicit, PruningOptions? Default) ToPruning(ChatOptions? o, AutoPruneChatClientOptions defaults)
    {
        PruningMethod? method = null;
        double? budget = null;
        var extra = o?.AdditionalProperties;
        if (extra is not null)
        {
            foreach (var key in new[] { PruningKnobs.MethodKey, PruningKnobs.PruningMethodKey })
                if (extra.TryGetValue(key, out var m) && m is not null) method = PruningKnobs.ReadMethod(m, key);
            if (extra.TryGetValue(PruningKnobs.BudgetKey, out var b) && b is not null)
                budget = PruningKnobs.ReadBudget(b, PruningKnobs.BudgetKey);
        }
        // The configured options (an options file or the "AutoPrune:Pruning" section, read when the client was made) with
        // the configured Method and Budget over them: the client's default.
        var configured = defaults.DefaultPruning(defaults.Pruning);
        if (method is PruningMethod asked)
        {
            var p = (configured ?? new PruningOptions()) with { Method = asked };
            return (budget is double bb ? p with { Budget = bb } : p, null);
        }
        if (configured is null && budget is null) return (null, null); // the model's DefaultPruning applies
        var d = configured ?? PruningOptions.Default; // a budget alone keeps the default method
        return (null, budget is double fb ? d with { Budget = fb } : d);
    }

    private static string RenderText(ChatMessage message, int index)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < message.Contents.Count; i++)
        {
            switch (message.Contents[i])
            {
                case TextContent t: sb.Append(t.Text); break;
                case TextReasoningContent or UsageContent: break; // metadata of an earlier answer, not conversation text
                case var c: throw Unsupported(message, index, i, c, $"only text is supported in {message.Role} messages");
            }
        }
        return sb.ToString();
    }

    /// <summary>Text parts are concatenated in order (as <see cref="ChatMessage.Text"/> does); each image becomes an
    /// <c>&lt;image&gt;</c> placeholder, separated from neighbouring text by a newline.</summary>
    private static string RenderUser(ChatMessage message, int index, List<ImageInput> images)
    {
        var sb = new StringBuilder();
        bool lastWasImage = false;
        for (int i = 0; i < message.Contents.Count; i++)
        {
            var content = message.Contents[i];
            switch (content)
            {
                case TextContent t:
                    if (t.Text.Contains(Prompting.ImagePlaceholder, StringComparison.Ordinal))
                        throw new ArgumentException($"Message {index}, part {i}: the text contains the reserved image placeholder '{Prompting.ImagePlaceholder}'; pass images as DataContent instead.", "messages");
                    if (t.Text.Length == 0) break;
                    if (lastWasImage) sb.Append('\n');
                    sb.Append(t.Text);
                    lastWasImage = false;
                    break;
                case DataContent d:
                    if (!d.HasTopLevelMediaType("image"))
                        throw new ArgumentException($"Message {index}, part {i}: DataContent with media type '{d.MediaType}' is not an image; only image/* data is supported.", "messages");
                    images.Add(ImageInput.FromBytes(d.Data, d.Name ?? $"message {index} part {i} ({d.MediaType})"));
                    AppendImage(sb);
                    lastWasImage = true;
                    break;
                case UriContent u:
                    if (!u.Uri.IsAbsoluteUri || !u.Uri.IsFile)
                        throw new NotSupportedException($"Message {index}, part {i}: UriContent '{u.Uri}' is not a file: URI; the local model does not download images, pass the bytes as DataContent.");
                    if (!u.HasTopLevelMediaType("image"))
                        throw new ArgumentException($"Message {index}, part {i}: UriContent '{u.Uri}' has media type '{u.MediaType}', not image/*.", "messages");
                    images.Add(ImageInput.FromFile(u.Uri.LocalPath));
                    AppendImage(sb);
                    lastWasImage = true;
                    break;
                case TextReasoningContent or UsageContent:
                    break;
                default:
                    throw Unsupported(message, index, i, content, "user messages may hold text, image DataContent and file: UriContent");
            }
        }
        return sb.ToString();
    }

    private static void AppendImage(StringBuilder sb)
    {
        if (sb.Length > 0) sb.Append('\n');
        sb.Append(Prompting.ImagePlaceholder);
    }

    private static NotSupportedException Unsupported(ChatMessage message, int index, int part, AIContent content, string why) =>
        new($"Message {index} ({message.Role}), part {part}: {content.GetType().Name} is not supported by the AutoPrune chat client; {why}.");
}
